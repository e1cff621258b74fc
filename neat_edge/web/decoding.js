// Patches and incremental decoding, as neat_edge/patching.py, runtimes/patches.py and runtimes/decoding.py
// do them (one stream): which graph runs for each new byte, with the caches carried as named tensors.
//   position S-1: decode_commit (the segment is complete), then decode_start for the next segment;
//   the next byte starts a patch (fixed: every patch_size bytes; entropy: the BLT patcher on the entropy
//   model's next-byte entropy): decode_patch, then decode_chunk when that patch ended a memory chunk;
//   otherwise decode_byte.

import { STATE_IN, STATE_OUT } from "./bundle.js";
import { NeatError } from "./safetensors.js";

const CACHE_IN = "cache.";
const CACHE_OUT = "next_cache.";

// spec.cache_from_state: the committed state a cache starts each segment from, when it is one.
function cacheFromState(name) {
  const parts = name.split(".");
  if (parts[0] === "latent" && parts[2]?.startsWith("conv_")) return `memory.${parts[1]}.${parts[2]}`;
  if (parts[0] === "chunk") return "memory." + parts.slice(1).join(".");
  return null;
}

// patching.EntropyPatcher.starts: a new patch where H > θ_g, or H rose by more than θ_r, or the open
// patch reached max_patch_len. Streaming: state = {prev, open} carries across calls.
export class EntropyPatcher {
  constructor(threshold, relativeThreshold, maxPatchLen) {
    this.threshold = threshold;
    this.relativeThreshold = relativeThreshold ?? null;
    this.maxPatchLen = maxPatchLen;
  }

  starts(entropies, state = { prev: null, open: 0 }) {
    const n = entropies.length;
    if (n === 0) return [[], state];
    const starts = Array.from(entropies, (h) => h > this.threshold);
    if (this.relativeThreshold !== null) {
      for (let i = 0; i < n; i++) {
        const prev = i === 0 ? (state.prev === null ? Infinity : state.prev) : entropies[i - 1];
        if (entropies[i] - prev > this.relativeThreshold) starts[i] = true;
      }
    }
    if (state.open === 0) starts[0] = true;
    const ruled = starts.flatMap((s, i) => (s ? [i] : []));
    let runStart = state.open ? -state.open : null;
    for (const c of [...ruled, n]) {
      if (runStart !== null) for (let f = runStart + this.maxPatchLen; f < c; f += this.maxPatchLen) starts[f] = true;
      runStart = c;
    }
    const last = starts.lastIndexOf(true);
    return [starts, { prev: entropies[n - 1], open: last >= 0 ? n - last : state.open + n }];
  }
}

// patching.segment_patches / ids_from_starts -> (patch_ids, patch_mask)
export function fixedPatches(n, patchSize) {
  const ids = new BigInt64Array(n);
  for (let i = 0; i < n; i++) ids[i] = BigInt(Math.floor(i / patchSize));
  const used = n ? Math.floor((n - 1) / patchSize) + 1 : 0;
  const mask = new Float32Array(Math.max(used, 1));
  mask.fill(1, 0, used);
  return [ids, mask, used];
}

export function idsFromStarts(starts) {
  const ids = new BigInt64Array(starts.length);
  let patch = -1;
  starts.forEach((s, i) => {
    if (s) patch++;
    ids[i] = BigInt(patch);
  });
  const used = patch + 1;
  return [ids, new Float32Array(Math.max(used, 1)).fill(1), used];
}

// The decode state of one stream: caches, position in the segment, the open patch, the next position's
// outputs. begin() starts a segment from a committed state; feed() advances by one token and returns
// the new committed state when the segment completes.
export class Decoder {
  // graphs.specs: name -> the manifest's entry of every decode graph; graphs.forZ(z) -> name -> Graph
  // (graph.run(feeds) -> outputs) with the SVF weights of z in them
  constructor(graphs, config, patcher, makeTensor) {
    this.provider = graphs;
    this.config = config;
    this.patcher = patcher;
    this.T = makeTensor; // (dtype, data, dims) -> a tensor the graphs take
    this.chunkSpan = Math.ceil(config.max_patches_per_segment / config.memory_chunks);
    this.svfZ = null;
    this.cacheNames = [...new Set(Object.entries(graphs.specs).filter(([name]) => !name.startsWith("entropy_"))
      .flatMap(([, spec]) => spec.inputs.map((t) => t.name))
      .filter((n) => n.startsWith(CACHE_IN)).map((n) => n.slice(CACHE_IN.length)))].sort();
  }

  async begin(state, svfZ, entropyContext = null) {
    this.state = state;
    if (this.svfZ === null || !sameArray(this.svfZ, svfZ)) {
      this.svfZ = Float32Array.from(svfZ);
      this.graphs = await this.provider.forZ(this.svfZ);
    }
    // the tensors this stream's runs made: the only ones writeRows may change (a cache taken from the
    // committed state is copied before its first write: the state stays as it was committed)
    this.owned = new WeakSet();
    this.inputs = {};
    for (const [k, v] of Object.entries(state)) this.inputs[STATE_IN + k] = v;
    // the per-byte scalars: one tensor each, its value set before every run (ONNX Runtime Web copies
    // every input into WebAssembly memory at the run, so a changed value is never seen late)
    for (const name of ["token", "position", "patch", "patch_start", "chunk"]) this.inputs[name] = this.T("int64", new BigInt64Array(1), name === "token" ? [1, 1] : [1]);
    this.inputs.close = this.T("float32", Float32Array.of(1), [1]);
    this._take(await this._run(this.graphs.decode_start, this.inputs, this.inputs));
    this.position = 0;
    this.patch = 0;
    this.patchStart = 0;
    this.tokens = [];
    if (this.patcher) {
      this.entropyInputs = {};
      const out = await this._run(this.graphs.entropy_decode_start, { [STATE_IN + "byte_context"]: entropyContext }, this.entropyInputs);
      Object.assign(this.entropyInputs, cachesOf(out));
      this.entropyContext = entropyContext;
      this.entropies = [out.entropy.data[0]];
      this.patcherState = { prev: null, open: 0 };
      this._starts(out.entropy.data[0]);
    }
  }

  // graph.run, then its cache writes fetched as rows (graph.scatter) written into the caches of `caches`
  async _run(graph, feeds, caches) {
    const out = await graph.run(feeds);
    for (const v of Object.values(out)) this.owned.add(v);
    for (const [name, s] of Object.entries(graph.scatter)) {
      const key = CACHE_IN + name.slice(CACHE_OUT.length);
      let cache = caches[key];
      if (!this.owned.has(cache)) {
        cache = caches[key] = this.T(cache.type, cache.data.slice(), cache.dims);
        this.owned.add(cache);
      }
      writeRows(cache, out[s.index], out[s.rows], s.axis);
    }
    return out;
  }

  _take(out) {
    this._update(out);
    for (const name of this.cacheNames) {
      const source = cacheFromState(name);
      if (source) this.inputs[CACHE_IN + name] = this.state[source];
    }
  }

  _update(out) {
    Object.assign(this.inputs, cachesOf(out));
    if (out.byte_logprobs) {
      this.logprobs = out.byte_logprobs.data; // [1, vocab]
      this.hidden = out.hidden;
    }
  }

  _starts(entropy) {
    const [starts, st] = this.patcher.starts([entropy], this.patcherState);
    this.patcherState = st;
    return starts[0];
  }

  async feed(token) {
    const cfg = this.config;
    const i = this.position;
    this.tokens.push(token);
    const feeds = this.inputs;
    feeds.token.data[0] = BigInt(token);
    feeds.position.data[0] = BigInt(i);
    feeds.patch.data[0] = BigInt(this.patch);
    feeds.patch_start.data[0] = BigInt(this.patchStart);
    if (i === cfg.segment_len - 1) {
      const out = await this._run(this.graphs.decode_commit, feeds, feeds);
      return Object.fromEntries(Object.entries(out).filter(([k]) => k.startsWith(STATE_OUT)).map(([k, v]) => [k.slice(STATE_OUT.length), v]));
    }
    let start;
    if (!this.patcher) {
      start = (i + 1) % cfg.patch_size === 0;
    } else {
      Object.assign(this.entropyInputs, { token: feeds.token, position: feeds.position });
      const out = await this._run(this.graphs.entropy_decode_byte, this.entropyInputs, this.entropyInputs);
      Object.assign(this.entropyInputs, cachesOf(out));
      this.entropies.push(out.entropy.data[0]);
      start = this._starts(out.entropy.data[0]);
    }
    if (start) {
      this._update(await this._run(this.graphs.decode_patch, feeds, feeds));
      if (cfg.memory_chunks > 1 && (this.patch + 1) % this.chunkSpan === 0) {
        feeds.chunk.data[0] = BigInt(Math.floor(this.patch / this.chunkSpan));
        this._update(await this._run(this.graphs.decode_chunk, feeds, feeds));
      }
      this.patch += 1;
      this.patchStart = i + 1;
    } else {
      this._update(await this._run(this.graphs.decode_byte, feeds, feeds));
    }
    this.position = i + 1;
    return null;
  }

  get patches() {
    return this.patch + (this.position > 0 ? 1 : 0);
  }

  // (entropy patching) the patcher state after a completed segment, as the segment path leaves it
  entropyState() {
    const ctx = this.entropyContext.data;
    const w = ctx.length;
    const all = [...Array.from(ctx), ...this.tokens.map((t) => BigInt(t))].slice(-w);
    return {
      "entropy.byte_context": this.T("int64", BigInt64Array.from(all), [1, w]),
      "entropy.prev": this.T("float32", Float32Array.of(this.entropies[this.entropies.length - 1]), [1]),
    };
  }
}

// [web.scatter of a graph's manifest entry, the outputs to fetch]: each cache output named there is fetched as
// its write's index and rows instead (checked: a write the page could not place would corrupt a cache silently).
export function scatterPlan(spec) {
  const scatter = spec.web?.scatter ?? {};
  for (const [name, s] of Object.entries(scatter)) {
    const out = spec.outputs.find((t) => t.name === name);
    if (!out || !name.startsWith(CACHE_OUT) || !spec.inputs.some((t) => t.name === CACHE_IN + name.slice(CACHE_OUT.length))
        || typeof s?.index !== "string" || typeof s?.rows !== "string" || !Number.isInteger(s.axis) || s.axis < 0 || s.axis >= out.shape.length) {
      throw new NeatError(`bad bundle manifest: web.scatter of ${spec.file} names '${String(name).slice(0, 60)}', not a cache output of the graph with its index, rows and axis`);
    }
  }
  const written = Object.values(scatter).flatMap((s) => [s.index, s.rows]);
  return [scatter, [...new Set([...spec.outputs.map((t) => t.name).filter((n) => !(n in scatter)), ...written])]];
}

// ONNX's ScatterElements (no reduction), into `cache` in place: for every position p of `rows`, the cache
// element at p with p[axis] replaced by index[p] becomes rows[p]. The graph computed next_cache.X so from
// cache.X; doing it here spares copying the whole cache out of WebAssembly memory on every run.
export function writeRows(cache, index, rows, axis) {
  const dims = cache.dims;
  const shape = rows.dims;
  const rank = dims.length;
  if (shape.length !== rank || index.dims.length !== rank || index.dims.some((d, k) => d !== shape[k])) {
    throw new NeatError(`a cache write of shape [${shape}] does not fit a cache of shape [${dims}]`);
  }
  const strides = new Array(rank);
  for (let d = rank - 1, s = 1; d >= 0; d--) {
    strides[d] = s;
    s *= dims[d];
  }
  const data = cache.data;
  const values = rows.data;
  const slots = index.data;
  const last = rank - 1;
  const line = shape[last]; // rows go line by line along the last axis; `at`: a line's other coordinates
  const at = new Array(last).fill(0);
  if (values.length === 0) return;
  for (let p = 0; p < values.length; p += line) {
    let base = 0;
    for (let d = 0; d < last; d++) if (d !== axis) base += at[d] * strides[d];
    if (axis === last) {
      for (let q = 0; q < line; q++) data[base + slotOf(slots[p + q], dims[axis])] = values[p + q];
    } else {
      // a line whose slots are all one (every cache write the export makes: one row per slot) is contiguous in
      // both the rows and the cache: one block copy
      const first = slots[p];
      let same = true;
      for (let q = 1; q < line && same; q++) same = slots[p + q] === first;
      if (same) data.set(values.subarray(p, p + line), base + slotOf(first, dims[axis]) * strides[axis]);
      else for (let q = 0; q < line; q++) data[base + slotOf(slots[p + q], dims[axis]) * strides[axis] + q] = values[p + q];
    }
    for (let d = last - 1; d >= 0 && ++at[d] === shape[d]; d--) at[d] = 0;
  }
}

function slotOf(value, rows) {
  const slot = Number(value) < 0 ? Number(value) + rows : Number(value);
  if (!(slot >= 0 && slot < rows)) throw new NeatError(`a cache write at ${value} is outside its cache (${rows} rows)`);
  return slot;
}

function cachesOf(out) {
  const caches = {};
  for (const [name, value] of Object.entries(out)) if (name.startsWith(CACHE_OUT)) caches[CACHE_IN + name.slice(CACHE_OUT.length)] = value;
  return caches;
}

export function sameArray(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return false;
  return true;
}
