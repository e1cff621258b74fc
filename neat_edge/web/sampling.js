// Choosing the next byte: greedy (the first of the largest log-probs, as numpy's argmax) or a sample at
// a temperature from a seeded generator (xoshiro128**, seeded through splitmix32). A seed gives the same
// bytes in every browser; the stream is this generator's, not numpy's, so a seeded sample matches the
// Python session's only at temperature 0.

function splitmix32(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export class Rng {
  constructor(seed) {
    if (seed === undefined || seed === null) seed = crypto.getRandomValues(new Uint32Array(1))[0];
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
    const mix = splitmix32((seed % 2 ** 32) ^ Math.floor(seed / 2 ** 32));
    this.s = Uint32Array.of(mix(), mix(), mix(), mix());
  }

  nextUint32() {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  // a double in [0, 1) with 53 random bits
  random() {
    return ((this.nextUint32() >>> 5) * 67108864 + (this.nextUint32() >>> 6)) / 9007199254740992;
  }
}

function rotl(x, k) {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

// logprobs: the full row (vocab); only bytes 0..255 are ever chosen, never specials
export function chooseByte(logprobs, temperature, rng) {
  let best = 0;
  for (let b = 1; b < 256; b++) if (logprobs[b] > logprobs[best]) best = b;
  if (temperature === 0) return best;
  const max = logprobs[best];
  const p = new Float64Array(256);
  let sum = 0;
  for (let b = 0; b < 256; b++) sum += (p[b] = Math.exp((logprobs[b] - max) / temperature));
  const u = rng.random() * sum;
  let cdf = 0;
  for (let b = 0; b < 256; b++) {
    cdf += p[b];
    if (cdf > u) return b;
  }
  return best;
}
