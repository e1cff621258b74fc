// NEAT-Edge in the browser: a byte stream over the bundle's ONNX graphs (ONNX Runtime Web), with all the
// state outside the graphs, as neat_edge/runtimes/session.py keeps it. The stream is cut into segments
// from its start; a full segment is run once and its state committed; the trailing partial segment is
// scored but not committed. Generation runs the decode graphs one byte at a time with their caches
// (decoding.js). State files are the Python session's (safetensors + content digest, safetensors.js).
//
//   const session = await openSession("./", { backend: "wasm", threads: 1 });
//   const out = await session.generate(new TextEncoder().encode("def "), 64);
//   for await (const [byte, logprob] of session.stream(prompt, 64, { temperature: 0.8, seed: 1 })) ...

import { openBundle, STATE_IN, STATE_OUT } from "./bundle.js";
import { Decoder, EntropyPatcher, fixedPatches, idsFromStarts, sameArray, scatterPlan } from "./decoding.js";
import { dispatch as dispatchExperts, ExpertLibrary } from "./dispatch.js";
import { bakeInputs } from "./onnx_edit.js";
import { chooseByte, Rng } from "./sampling.js";
import { NeatError, readTensors, sha256Hex, writeSafetensors, isFinite32 } from "./safetensors.js";

export { NeatError };
export const STATE_FORMAT = "neat-session-state/2";
const STATE_FORMATS = [STATE_FORMAT, "neat-session-state/1"];
const MAX_NEW_BYTES = 1 << 24;
const ORT_MODULES = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };

// One ONNX graph behind the backend protocol: run(feeds) takes the inputs its spec names, returns outputs.
class Graph {
  static async open(ort, bytes, entry, providers) {
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: providers, graphOptimizationLevel: "all" });
    } catch (e) {
      throw new NeatError(`ONNX Runtime Web cannot load ${entry.file}: ${String(e.message ?? e).slice(0, 300)}`);
    }
    const want = entry.inputs.map((t) => t.name);
    const extra = [...want.filter((n) => !session.inputNames.includes(n)), ...session.inputNames.filter((n) => !want.includes(n))];
    if (extra.length) throw new NeatError(`graph ${entry.file} disagrees with the manifest: input '${extra[0]}' is in ${want.includes(extra[0]) ? "the manifest only" : "the graph only"}`);
    const graph = new Graph(session, entry);
    const missing = [...entry.outputs.map((t) => t.name), ...graph.fetches].find((n) => !session.outputNames.includes(n));
    if (missing) throw new NeatError(`graph ${entry.file} disagrees with the manifest: the graph has no output '${missing}'`);
    return graph;
  }

  constructor(session, spec) {
    this.session = session;
    this.spec = spec;
    this.names = spec.inputs.map((t) => t.name);
    // web.scatter (export/web_graphs.py): these cache outputs are fetched as the index and rows of their
    // write, which the caller writes into its own cache (decoding.js); every other output as it is
    [this.scatter, this.fetches] = scatterPlan(spec);
  }

  async run(feeds) {
    const chosen = {};
    for (const n of this.names) {
      if (feeds[n] === undefined) throw new NeatError(`graph ${this.spec.file}: no value for input '${n}'`);
      chosen[n] = feeds[n];
    }
    return this.session.run(chosen, this.fetches);
  }
}

// The decode graphs. decode_svf (z -> the SVF layers' weights) and the entropy model's run as they are;
// every other one is opened with the weights of the current z baked in (onnx_edit.js), once per z.
class DecodeGraphs {
  static async open(ort, bundle, entries, providers) {
    const graphs = new DecodeGraphs(ort, providers);
    for (const [name, entry] of Object.entries(entries)) {
      if (name === "decode_image_head") continue; // MVoT images: the Python runtime's
      const bytes = bundle.file(entry.file, `decode.graphs.onnx.${name}.file`);
      graphs.specs[name] = entry;
      if (name === "decode_svf" || name.startsWith("entropy_")) graphs.plain[name] = await Graph.open(ort, bytes, entry, providers);
      else graphs.bytes[name] = bytes;
    }
    if (!graphs.plain.decode_svf) throw new NeatError(`bundle ${bundle.base}: decode graphs without decode_svf: re-export it`);
    return graphs;
  }

  constructor(ort, providers) {
    this.ort = ort;
    this.providers = providers;
    this.specs = {};
    this.plain = {};
    this.bytes = {};
    this.z = null;
    this.baked = null;
  }

  async forZ(z) {
    if (this.z && sameArray(this.z, z)) return this.baked;
    const weights = await this.plain.decode_svf.run({ svf_z: new this.ort.Tensor("float32", z, [z.length]) });
    for (const [name, g] of Object.entries(this.baked ?? {})) if (!(name in this.plain)) await g.session.release();
    const baked = { ...this.plain };
    for (const [name, bytes] of Object.entries(this.bytes)) {
      const entry = this.specs[name];
      const values = {};
      for (const t of entry.inputs) {
        if (t.name.startsWith("svf.")) values[t.name] = { dims: weights[t.name].dims, data: weights[t.name].data };
      }
      const spec = { ...entry, inputs: entry.inputs.filter((t) => !(t.name in values)) };
      baked[name] = await Graph.open(this.ort, bakeInputs(bytes, values), spec, this.providers);
    }
    this.z = Float32Array.from(z);
    this.baked = baked;
    return baked;
  }
}

async function loadOrt(base, backend, threads) {
  if (!(backend in ORT_MODULES)) throw new NeatError(`unknown backend '${backend}' (choose from wasm, webgpu)`);
  if (backend === "webgpu" && !navigator.gpu) throw new NeatError("this browser offers no WebGPU: use backend 'wasm'");
  const ort = await import(base + "ort/" + ORT_MODULES[backend]);
  ort.env.wasm.wasmPaths = base + "ort/";
  const most = globalThis.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new NeatError(`threads must be an integer >= 1, got ${threads}`);
  if (threads > 1 && !globalThis.crossOriginIsolated) {
    throw new NeatError("threads > 1 need a cross-origin isolated page (the server must send Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)");
  }
  ort.env.wasm.numThreads = threads ?? most;
  return ort;
}

function asBytes(data, what) {
  if (data instanceof Uint8Array) return data;
  const hint = typeof data === "string" ? ": encode it first (new TextEncoder().encode(text))" : "";
  throw new NeatError(`${what} takes a Uint8Array, got ${data === null ? "null" : typeof data}${hint}`);
}

function join(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// Open the bundle at baseUrl (checked: manifest, paths, every file's sha256, initial state) and a
// session on it. backend: "wasm" (WebAssembly) or "webgpu"; threads: WebAssembly threads (default: all
// the page may use; more than one needs cross-origin isolation).
export async function openSession(baseUrl, { backend = "wasm", threads, onProgress } = {}) {
  const base = new URL(baseUrl, globalThis.location?.href).href.replace(/\/?$/, "/");
  const ort = await loadOrt(base, backend, threads);
  const bundle = await openBundle(base, onProgress);
  const m = bundle.manifest;
  if (m.fingerprint !== undefined && (await sha256Hex(new TextEncoder().encode(m.web.config_json))).slice(0, 16) !== m.fingerprint) {
    throw new NeatError(`bad bundle manifest ${base}neat.json: 'fingerprint' is ${m.fingerprint}, but the config's is another`);
  }
  const config = { ...bundle.config, vocab_size: m.web.vocab_size, max_patches_per_segment: m.web.max_patches_per_segment };
  const initial = bundle.initialState();
  const providers = [backend];
  const open = (entry, field) => Graph.open(ort, bundle.file(entry.file, field), entry, providers);
  const patching = bundle.patching;
  let entropy = null;
  if (patching.kind === "entropy") {
    const entry = patching.graphs?.onnx;
    if (!entry) throw new NeatError(`bundle ${base}: entropy patching, but no ONNX entropy graph`);
    entropy = {
      graph: await open(entry, "patching.graphs.onnx.file"),
      patcher: new EntropyPatcher(patching.threshold, patching.relative_threshold, patching.max_patch_len),
      context: patching.entropy_context_len,
    };
  }
  const step = await open(m.graphs.onnx, "graphs.onnx.file");
  const entries = m.decode?.graphs?.onnx;
  const decode = entries ? await DecodeGraphs.open(ort, bundle, entries, providers) : null;
  const experts = await ExpertLibrary.fromBundle(bundle);
  bundle.contents.clear(); // every file is read (the decode graphs keep their bytes, to bake a new z into)
  const session = new Session(ort, bundle, config, step, initial, entropy, decode, experts);
  await session.init();
  return session;
}

export class Session {
  constructor(ort, bundle, config, step, initial, entropy, decode, experts) {
    this.ort = ort;
    this.bundle = bundle;
    this.config = config;
    this.step = step;
    this.entropy = entropy;
    this.decodeGraphs = decode;
    this.experts = experts;
    this.T = (dtype, data, dims) => new ort.Tensor(dtype, data, dims);
    this._initial = Object.fromEntries(Object.entries(initial).map(([k, t]) => [k, this.T(t.dtype, t.data, t.shape)]));
    this._initialPatch = entropy ? {
      "entropy.byte_context": this.T("int64", new BigInt64Array(entropy.context).fill(256n), [1, entropy.context]), // BOS
      "entropy.prev": this.T("float32", Float32Array.of(NaN), [1]),
    } : {};
    const rank = step.spec.inputs.find((t) => t.name === "svf_z").shape[0];
    this.svfZ = new Float32Array(rank).fill(1);
    this.busy = false;
    this.reset();
  }

  async init() {
    const parts = [new TextEncoder().encode(this.bundle.manifest.web.config_json)];
    const all = { ...this._initial, ...this._initialPatch };
    for (const name of Object.keys(all).sort()) {
      const t = all[name];
      parts.push(new TextEncoder().encode(name), new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    const total = parts.reduce((n, p) => n + p.length, 0);
    const buf = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      buf.set(p, at);
      at += p.length;
    }
    this.modelId = (await sha256Hex(buf)).slice(0, 16); // session.model_id: the architecture and initial state
  }

  // --- stream state ------------------------------------------------------------------------------
  reset() {
    this.state = { ...this._initial };
    this.patchState = { ...this._initialPatch };
    this.pending = new Uint8Array(0);
    this.position = 0;
    this.committedPatches = 0;
    this.pendingPatches = 0;
    this._decoder = null;
  }

  // Forget the Titans long-term memory; keep the short-term context (recent bytes, the last latent).
  resetMemory() {
    for (const [k, v] of Object.entries(this._initial)) if (k.startsWith("memory.")) this.state[k] = v;
    this._decoder = null;
  }

  get meanPatchLength() {
    return this.position / Math.max(this.committedPatches + this.pendingPatches, 1);
  }

  snapshot() {
    return { state: { ...this.state }, patchState: { ...this.patchState }, pending: this.pending.slice(),
             position: this.position, patches: [this.committedPatches, this.pendingPatches] };
  }

  restore(snap) {
    this._decoder = null;
    this.state = { ...snap.state };
    this.patchState = { ...snap.patchState };
    this.pending = snap.pending.slice();
    this.position = snap.position;
    [this.committedPatches, this.pendingPatches] = snap.patches;
  }

  async _exclusive(fn) {
    if (this.busy) throw new NeatError("the session is busy with another call: await it first");
    this.busy = true;
    try {
      return await fn();
    } finally {
      this.busy = false;
    }
  }

  // One step on `segment` from the committed state (or the given ones), no side effects.
  async runSegment(segment, state = this.state, patchState = this.patchState, svfZ = this.svfZ) {
    const n = segment.length;
    let ids, mask, used, nextPatch = patchState;
    if (this.entropy) {
      const out = await this.entropy.graph.run({ bytes: this.T("int64", BigInt64Array.from(segment, BigInt), [1, n]),
                                                 [STATE_IN + "byte_context"]: patchState["entropy.byte_context"] });
      const h = Array.from(out.entropy.data);
      const prev = patchState["entropy.prev"].data[0];
      const [starts] = this.entropy.patcher.starts(h, { prev: Number.isNaN(prev) ? null : prev, open: 0 });
      [ids, mask, used] = idsFromStarts(starts);
      nextPatch = { "entropy.byte_context": out[STATE_OUT + "byte_context"],
                    "entropy.prev": this.T("float32", Float32Array.of(h[h.length - 1]), [1]) };
    } else {
      [ids, mask, used] = fixedPatches(n, this.config.patch_size);
    }
    const feeds = { bytes: this.T("int64", BigInt64Array.from(segment, BigInt), [1, n]), patch_ids: this.T("int64", ids, [1, n]),
                    patch_mask: this.T("float32", mask, [1, mask.length]), svf_z: this.T("float32", svfZ, [svfZ.length]) };
    for (const [k, v] of Object.entries(state)) feeds[STATE_IN + k] = v;
    const out = await this.step.run(feeds);
    const next = {};
    for (const k of Object.keys(state)) {
      next[k] = out[STATE_OUT + k];
      if (!isFinite32({ data: next[k].data })) throw new NeatError(`the step graph produced NaN or infinite values in next_state.${k}`);
    }
    return { out, next, patchState: nextPatch, patches: used };
  }

  async _commitSegment(segment) {
    const r = await this.runSegment(segment);
    this.state = r.next;
    this.patchState = r.patchState;
    this.committedPatches += r.patches;
    this.pendingPatches = 0;
    return r.out;
  }

  // Natural-log probability of each byte of `data` given everything before it in the stream.
  score(data) {
    return this._exclusive(() => this._score(asBytes(data, "score")));
  }

  async _score(data) {
    this._decoder = null;
    const seg = this.config.segment_len;
    const V = this.config.vocab_size;
    const buf = join(this.pending, data);
    const scored = this.pending.length;
    const chosen = new Float32Array(data.length);
    let k = 0;
    const collect = (out, part, lo) => {
      const lp = out.byte_logprobs.data;
      for (let j = lo; j < part.length; j++) chosen[k++] = lp[j * V + part[j]];
    };
    let pos = 0;
    while (buf.length - pos >= seg) {
      const part = buf.subarray(pos, pos + seg);
      collect(await this._commitSegment(part), part, Math.max(scored - pos, 0));
      pos += seg;
    }
    const rest = buf.slice(pos);
    if (rest.length > Math.max(scored - pos, 0)) {
      const r = await this.runSegment(rest);
      this.pendingPatches = r.patches;
      collect(r.out, rest, Math.max(scored - pos, 0));
    }
    this.pending = rest;
    this.position += data.length;
    return chosen;
  }

  // Log-probs [vocab] of the next byte (does not advance the stream).
  nextByteLogprobs() {
    return this._exclusive(() => this._nextByteLogprobs());
  }

  async _nextByteLogprobs() {
    const decoder = await this._decoding();
    if (decoder) return decoder.logprobs;
    const probe = join(this.pending, Uint8Array.of(0));
    const V = this.config.vocab_size;
    const { out } = await this.runSegment(probe);
    return out.byte_logprobs.data.slice(this.pending.length * V, (this.pending.length + 1) * V);
  }

  // --- generation ------------------------------------------------------------------------------
  // Consume `prompt`, then sample up to maxNewBytes bytes (greedy at temperature 0).
  async generate(prompt, maxNewBytes, options = {}) {
    const out = [];
    for await (const [byte] of this.stream(prompt, maxNewBytes, options)) out.push(byte);
    return Uint8Array.from(out);
  }

  // generate(), one byte at a time: yields [byte, natural-log probability of it] as each is chosen.
  async *stream(prompt, maxNewBytes, { temperature = 0, seed } = {}) {
    asBytes(prompt, "generate");
    if (!Number.isInteger(maxNewBytes) || maxNewBytes < 0 || maxNewBytes > MAX_NEW_BYTES) {
      throw new NeatError(`maxNewBytes must be an integer in 0..${MAX_NEW_BYTES}, got ${maxNewBytes}`);
    }
    if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0) {
      throw new NeatError(`temperature must be a finite number >= 0, got ${temperature}`);
    }
    let rng;
    try {
      rng = new Rng(seed);
    } catch (e) {
      throw new NeatError(e.message);
    }
    if (this.busy) throw new NeatError("the session is busy with another call: await it first");
    this.busy = true;
    try {
      await this._appendKnown(prompt);
      for (let n = 0; n < maxNewBytes; n++) {
        const full = await this._nextByteLogprobs();
        const byte = chooseByte(full, temperature, rng);
        const logprob = full[byte];
        await this._appendKnown(Uint8Array.of(byte));
        this.busy = false; // the caller may look at the session between bytes, not call into it
        yield [byte, logprob];
        if (this.busy) throw new NeatError("the session was used while a stream was open on it");
        this.busy = true;
      }
    } finally {
      this.busy = false;
    }
  }

  // Advance the stream by bytes whose scores are not needed.
  append(data) {
    return this._exclusive(() => this._appendKnown(asBytes(data, "append")));
  }

  async _decoding() {
    if (!this.decodeGraphs) return null;
    const decoder = this._decoder;
    if (decoder && sameArray(decoder.svfZ, this.svfZ)) return decoder;
    const fresh = new Decoder(this.decodeGraphs, this.config, this.entropy?.patcher ?? null, this.T);
    await fresh.begin(this.state, this.svfZ, this.patchState["entropy.byte_context"] ?? null);
    for (const token of this.pending) await fresh.feed(token);
    this._decoder = fresh;
    return fresh;
  }

  async _push(token) {
    const decoder = this._decoder;
    const committed = await decoder.feed(token);
    this.pending = join(this.pending, Uint8Array.of(token));
    this.position += 1;
    if (committed === null) {
      this.pendingPatches = decoder.patches;
      return;
    }
    if (decoder.patcher) this.patchState = decoder.entropyState();
    this.committedPatches += decoder.patches;
    this.state = committed;
    this.pending = new Uint8Array(0);
    this.pendingPatches = 0;
    await decoder.begin(this.state, decoder.svfZ, this.patchState["entropy.byte_context"] ?? null);
  }

  async _appendKnown(data) {
    const seg = this.config.segment_len;
    if (this._decoder && data.length < seg && (await this._decoding())) {
      for (const token of data) await this._push(token);
      return;
    }
    this._decoder = null;
    this.pending = join(this.pending, data);
    this.position += data.length;
    while (this.pending.length >= seg) {
      await this._commitSegment(this.pending.subarray(0, seg));
      this.pending = this.pending.slice(seg);
    }
  }

  // Transformer² pass 1 (classifier | expert:NAME[=w,...] | none): sets svfZ, leaves the stream as it was.
  dispatch(prompt, strategy = "classifier", maxBytes) {
    return this._exclusive(() => dispatchExperts(this, asBytes(prompt, "dispatch"), strategy, maxBytes));
  }

  // --- persistence -----------------------------------------------------------------------------
  // The bytes of a state file (session.save_state's format: safetensors + content digest).
  saveState() {
    return this._exclusive(async () => {
      const tensors = {};
      const put = (name, t) => (tensors[name] = { dtype: t.type, shape: t.dims.slice(), data: t.data });
      for (const [k, v] of Object.entries(this.state)) put(STATE_IN + k, v);
      for (const [k, v] of Object.entries(this.patchState)) put("patcher." + k, v);
      tensors.pending = { dtype: "uint8", shape: [this.pending.length + 1], data: join(this.pending, Uint8Array.of(0)) };
      const meta = { format: STATE_FORMAT, model_id: this.modelId, position: String(this.position),
                     pending: String(this.pending.length), patches: String(this.committedPatches) };
      return writeSafetensors(tensors, meta);
    });
  }

  // Continue the stream saved in `bytes`: everything checked before the session changes (format,
  // digest, model, every tensor's name, dtype and shape, finite values, counters).
  loadState(bytes) {
    return this._exclusive(async () => {
      const what = "state file";
      const [tensors, meta] = await readTensors(asBytes(bytes, "loadState"), what, false);
      if (!STATE_FORMATS.includes(meta.format)) {
        throw new NeatError(`not a NEAT session state this version reads (format '${String(meta.format).slice(0, 40)}'; it reads ${STATE_FORMATS.join(", ")})`);
      }
      if (meta.format === STATE_FORMAT && meta.content_sha256 === undefined) throw new NeatError(`corrupted ${what}: it carries no content digest`);
      if (meta.model_id !== this.modelId) {
        throw new NeatError(`the state file was saved by a different model (model id ${String(meta.model_id).slice(0, 40)}, this session's is ${this.modelId})`);
      }
      const state = {};
      const patchState = {};
      const expected = new Set(["pending", "pending_tokens"]);
      for (const [prefix, initial, into] of [[STATE_IN, this._initial, state], ["patcher.", this._initialPatch, patchState]]) {
        for (const [name, ref] of Object.entries(initial)) {
          const t = tensors[prefix + name];
          expected.add(prefix + name);
          if (!t || t.dtype !== ref.type || t.shape.length !== ref.dims.length || t.shape.some((d, i) => d !== ref.dims[i])) {
            throw new NeatError(`the state file is corrupted: tensor '${name}' is missing or malformed`);
          }
          if (!isFinite32(t) && !(name === "entropy.prev" && t.data.every(Number.isNaN))) {
            throw new NeatError(`the state file is corrupted: tensor '${name}' holds NaN or infinite values`);
          }
          into[name] = this.T(t.dtype, t.data, t.shape);
        }
      }
      const unexpected = Object.keys(tensors).filter((k) => !expected.has(k)).sort();
      if (unexpected.length) throw new NeatError(`the state file is corrupted: unexpected tensor '${unexpected[0]}'`);
      if ("pending_tokens" in tensors) throw new NeatError("the state file holds image tokens (MVoT), which this runtime does not generate");
      const count = (k) => (/^-?\d+$/.test(meta[k] ?? "") ? Number(meta[k]) : NaN);
      const [nPending, position, patches] = [count("pending"), count("position"), count("patches")];
      if ([nPending, position, patches].some(Number.isNaN)) throw new NeatError("the state file is corrupted: bad metadata");
      const raw = tensors.pending;
      if (!raw || raw.dtype !== "uint8" || raw.shape.length !== 1 || raw.data.length !== nPending + 1
          || nPending >= this.config.segment_len || nPending < 0 || patches < 0 || position < nPending) {
        throw new NeatError("the state file is corrupted: bad pending bytes or counters");
      }
      this.state = state;
      this.patchState = patchState;
      this.pending = raw.data.slice(0, nPending);
      this.position = position;
      this.committedPatches = patches;
      this.pendingPatches = 0;
      this._decoder = null;
    });
  }
}
