// Transformer² in the browser, as neat_edge/experts.py and runtimes/dispatch.py: the bundle's experts
// (z per SVF layer, laid out as svf_z by the manifest's svf_layout), mixtures z = Σ α_k z_k, and the
// two-pass dispatch: pass 1 runs the step graph over the prompt from a snapshot of the stream (the memory
// is left as it was), the dispatch head's logits give α; pass 2 is generate / score with the new z.

import { NeatError, readTensors } from "./safetensors.js";

const EXPERT_FORMAT = "neat-expert/1";
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
export const DEFAULT_PASS1_BYTES = 512;

export class ExpertLibrary {
  constructor(layout, baseId, slots) {
    this.layout = layout;
    this.baseId = baseId ?? null;
    this.slots = slots ?? []; // expert name behind each dispatch-head output
    this.experts = new Map(); // name -> {domain, flat: Float32Array}
    this.skipped = new Map(); // name -> why
    this.rank = layout.reduce((n, e) => n + e.rank, 0);
  }

  // every expert the manifest lists (its file verified by the bundle's checksums)
  static async fromBundle(bundle) {
    const m = bundle.manifest;
    if (!m.svf_layout) return null;
    const library = new ExpertLibrary(m.svf_layout, m.svf_base_id, m.dispatch?.experts);
    for (const entry of m.experts ?? []) {
      const stem = entry.file.split("/").pop().replace(/\.safetensors$/, "");
      try {
        if (!NAME_RE.test(stem)) throw new NeatError(`bad expert name '${stem}'`);
        const what = `expert file ${entry.file}`;
        const [tensors, meta] = await readTensors(bundle.file(entry.file, "experts.file"), what, false);
        if (meta.format !== EXPERT_FORMAT) throw new NeatError(`${entry.file} is not a NEAT expert file (format '${String(meta.format).slice(0, 40)}')`);
        if (library.baseId && meta.base_id !== undefined && meta.base_id !== library.baseId) {
          throw new NeatError(`expert '${stem}' was trained for other base weights (base id ${meta.base_id}, this model's is ${library.baseId})`);
        }
        library.experts.set(stem, { domain: meta.domain ?? "", flat: library.flatten(stem, tensors) });
      } catch (e) {
        if (!(e instanceof NeatError)) throw e;
        library.skipped.set(stem, e.message);
      }
    }
    return library;
  }

  flatten(name, tensors) {
    const out = new Float32Array(this.rank).fill(1);
    for (const e of this.layout) {
      const t = tensors[e.name];
      if (!t || t.shape.length !== 1 || t.shape[0] !== e.rank || t.dtype !== "float32" || !t.data.every(Number.isFinite)) {
        throw new NeatError(`expert '${name}' does not fit this model: layer ${e.name} is ${t ? `shape [${t.shape}]` : "missing"}, expected (${e.rank},)`);
      }
      out.set(t.data, e.offset);
    }
    return out;
  }

  get names() {
    return [...this.experts.keys()];
  }

  get(name) {
    const e = this.experts.get(name);
    if (!e) throw new NeatError(this.skipped.get(name) ?? `no expert '${name}' (available: ${this.names.join(", ") || "none"})`);
    return e;
  }

  // z = Σ α_k z_k (float64 sums, as numpy's); no weights: the base z (all ones)
  mix(weights) {
    const entries = Object.entries(weights);
    if (!entries.length) return new Float32Array(this.rank).fill(1);
    const z = new Float64Array(this.rank);
    for (const [name, alpha] of entries) {
      const flat = this.get(name).flat;
      for (let i = 0; i < z.length; i++) z[i] += alpha * flat[i];
    }
    return Float32Array.from(z);
  }
}

// 'NAME' -> {NAME: 1}; 'a=0.7,b=0.3' -> those weights
function fixedWeights(library, arg) {
  if (!arg.includes("=")) {
    library.get(arg);
    return { [arg]: 1 };
  }
  const weights = {};
  for (const part of arg.split(",")) {
    const [name, value] = part.split("=");
    const w = Number(value);
    if (value === undefined || value.trim() === "" || !Number.isFinite(w)) throw new NeatError(`bad expert weight '${part}' (expected NAME=NUMBER)`);
    library.get(name.trim());
    weights[name.trim()] = w;
  }
  return weights;
}

// pass 1 on a snapshot: the dispatch logits of every segment of `data` after the stream's position
async function sidePass(session, data, svfZ, snap) {
  const seg = session.config.segment_len;
  let { state, patchState } = snap;
  const buf = new Uint8Array(snap.pending.length + data.length);
  buf.set(snap.pending);
  buf.set(data, snap.pending.length);
  const logits = [];
  for (let start = 0; start < buf.length; start += seg) {
    const part = buf.subarray(start, start + seg);
    const r = await session.runSegment(part, state, patchState, svfZ);
    logits.push(r.out.dispatch_logits.data);
    if (part.length === seg) ({ next: state, patchState } = r);
  }
  return logits;
}

async function classifierWeights(session, library, prompt, maxBytes) {
  const slots = library.slots.map((name, i) => [i, name]).filter(([, name]) => library.experts.has(name));
  if (!slots.length) throw new NeatError("this model has no trained dispatch head for its experts: use expert:NAME");
  const seen = prompt.subarray(0, maxBytes);
  const snap = session.snapshot();
  if (!seen.length && !snap.pending.length) return [{}, 0];
  const logits = await sidePass(session, seen, new Float32Array(session.svfZ.length).fill(1), snap);
  const mean = slots.map(([i]) => logits.reduce((s, l) => s + l[i], 0) / logits.length);
  const max = Math.max(...mean);
  const p = mean.map((v) => Math.exp(v - max));
  const total = p.reduce((a, b) => a + b, 0);
  return [Object.fromEntries(slots.map(([, name], k) => [name, p[k] / total])), seen.length];
}

// Choose α for `prompt` (strategy: classifier | expert:NAME[=w,...] | none), set session.svfZ to the
// mixture and return {strategy, weights, pass1Bytes, seconds}. The stream state is not changed.
export async function dispatch(session, prompt, strategy = "classifier", maxBytes = DEFAULT_PASS1_BYTES) {
  const at = strategy.indexOf(":");
  const kind = at < 0 ? strategy : strategy.slice(0, at);
  const arg = at < 0 ? "" : strategy.slice(at + 1);
  if (!["classifier", "expert", "none"].includes(kind)) {
    throw new NeatError(`unknown dispatch '${strategy}' (choose from classifier, expert:NAME, none; few-shot search is the Python runtime's)`);
  }
  if (kind === "expert" && !arg) throw new NeatError("dispatch expert needs an argument: expert:NAME");
  const t0 = performance.now();
  const library = session.experts;
  let weights = {};
  let seen = 0;
  if (kind !== "none") {
    if (!library) throw new NeatError("this bundle was exported before expert support: re-export it to use dispatch");
    if (kind === "classifier") [weights, seen] = await classifierWeights(session, library, prompt, maxBytes);
    else weights = fixedWeights(library, arg);
  }
  const z = library ? library.mix(weights) : new Float32Array(session.svfZ.length).fill(1);
  if (z.length !== session.svfZ.length) throw new NeatError(`the expert library's z has ${z.length} values, the graph's svf_z ${session.svfZ.length}`);
  session.svfZ = z;
  return { strategy: kind, weights, pass1Bytes: seen, seconds: (performance.now() - t0) / 1000 };
}
