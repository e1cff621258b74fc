// Reading a bundle over HTTP, checked as neat_edge/bundle.py and neat_edge/manifest.py check one: the
// manifest's format, version and fields, every path it names (relative, inside the bundle), the sha256
// of every file it lists (SubtleCrypto), and the initial state against the step graph's spec. A loader
// gets a file's bytes only through Bundle.file, which refuses files the checksums do not cover.

import { NeatError, numel, parseSafetensors, sha256Hex, isFinite32 } from "./safetensors.js";

export const FORMAT = "neat-bundle";
export const FORMAT_VERSION = 1;
const MANIFEST = "neat.json";
const MAX_MANIFEST_BYTES = 64 << 20;
const DTYPES = new Set(["float32", "float16", "int64", "int32", "bool", "uint8", "int8"]);
const PATH_KEYS = new Set(["file", "engine", "trtexec", "timing_cache", "initial_state", "checkpoint"]);
const PROVENANCE = new Set(["config", "parity", "tools", "calibration", "svf_truncation_error"]);
const STEP_INPUTS = ["bytes", "patch_ids", "patch_mask", "svf_z"];
const SHA256 = /^[0-9a-f]{64}$/;
const MAX_DIM = 2 ** 31;
export const STATE_IN = "state.";
export const STATE_OUT = "next_state.";

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const show = (v) => JSON.stringify(v === undefined ? null : v)?.slice(0, 60);

class Where {
  constructor(url) {
    this.url = url;
  }
  fail(field, why) {
    throw new NeatError(`bad bundle manifest ${this.url}: '${field}' ${why}`);
  }
  typed(value, kind, field, optional = false) {
    if ((value === undefined || value === null) && optional) return null;
    const ok = { int: Number.isInteger(value), float: typeof value === "number" && Number.isFinite(value),
                 str: typeof value === "string", object: isObject(value), list: Array.isArray(value),
                 bool: typeof value === "boolean" }[kind];
    if (!ok) {
      const name = { int: "an integer", float: "a finite number", str: "a string", object: "an object", list: "a list",
                     bool: "true or false" }[kind];
      this.fail(field, `must be ${name}, got ${show(value)}`);
    }
    return value;
  }
}

function checkTensor(w, at, t, seen) {
  w.typed(t, "object", at);
  const name = w.typed(t.name, "str", `${at}.name`);
  if (!name || seen.has(name)) w.fail(`${at}.name`, `${show(name)} is empty or named twice`);
  if (!DTYPES.has(t.dtype)) w.fail(`${at}.dtype`, `${show(t.dtype)} is not one of ${[...DTYPES].sort().join(", ")}`);
  for (const d of w.typed(t.shape, "list", `${at}.shape`)) {
    if (typeof d === "string" && d) continue;
    if (!Number.isInteger(d) || d < 0 || d >= MAX_DIM) w.fail(`${at}.shape`, `has dimension ${show(d)}: a size in 0..2^31 or an axis name`);
  }
  return name;
}

function checkGraphEntry(w, field, entry) {
  w.typed(entry, "object", field);
  w.typed(entry.file, "str", `${field}.file`);
  w.typed(entry.name, "str", `${field}.name`);
  const tensors = new Map();
  for (const io of ["inputs", "outputs"]) {
    const items = w.typed(entry[io], "list", `${field}.${io}`);
    if (!items.length) w.fail(`${field}.${io}`, "is empty");
    items.forEach((t, i) => {
      const name = checkTensor(w, `${field}.${io}[${i}]`, t, tensors);
      tensors.set(name, [io, t.dtype, JSON.stringify(t.shape)]);
    });
  }
  w.typed(entry.state ?? [], "list", `${field}.state`).forEach((pair, i) => {
    const at = `${field}.state[${i}]`;
    w.typed(pair, "object", at);
    const src = tensors.get(pair.input), dst = tensors.get(pair.output);
    if (!src || src[0] !== "inputs" || !dst || dst[0] !== "outputs") {
      w.fail(at, `pairs ${show(pair.input)} -> ${show(pair.output)}, which are not an input and an output of the graph`);
    }
    if (src[1] !== dst[1] || src[2] !== dst[2]) w.fail(at, `pairs ${pair.input} and ${pair.output}, whose dtypes or shapes differ`);
  });
  return tensors;
}

function checkStepEntry(w, field, entry, config, manifest) {
  const tensors = checkGraphEntry(w, field, entry);
  for (const name of STEP_INPUTS) if (tensors.get(name)?.[0] !== "inputs") w.fail(`${field}.inputs`, `has no '${name}' input`);
  const zShape = JSON.parse(tensors.get("svf_z")[2]);
  if (zShape.length !== 1 || !Number.isInteger(zShape[0])) w.fail(`${field}.inputs`, "'svf_z' must have one fixed dimension");
  const rank = w.typed(manifest.svf_rank, "int", "svf_rank", true);
  if (rank !== null && zShape[0] !== rank) w.fail(`${field}.inputs`, `'svf_z' has shape [${zShape}], svf_rank is ${rank}`);
  const sizes = { byte_logprobs: manifest.web.vocab_size, image_logits: config.image_codebook_size, dispatch_logits: config.n_experts };
  for (const [name, size] of Object.entries(sizes)) {
    const got = tensors.get(name);
    const shape = got ? JSON.parse(got[2]) : [];
    if (!got || got[0] !== "outputs" || !shape.length || shape[shape.length - 1] !== size) {
      w.fail(`${field}.outputs`, `'${name}' is missing or its last dimension is not ${size} (the config's)`);
    }
  }
  const pairs = new Set((entry.state ?? []).map((p) => `${p.input}>${p.output}`));
  for (const [name, [io]] of tensors) {
    if (io === "inputs" && name.startsWith(STATE_IN) && !pairs.has(`${name}>${STATE_OUT}${name.slice(STATE_IN.length)}`)) {
      w.fail(`${field}.state`, `does not pair state input '${name}' with '${STATE_OUT}${name.slice(STATE_IN.length)}'`);
    }
  }
}

// manifest.check_manifest, for what the web runtime reads; returns the config.
export function checkManifest(m, url) {
  const w = new Where(url);
  const config = w.typed(m.config, "object", "config");
  for (const key of ["segment_len", "patch_size", "context_len", "memory_chunks", "n_experts", "image_codebook_size"]) {
    if (!Number.isInteger(config[key]) || config[key] < 0) w.fail("config", `is not a valid config: ${key} must be an integer`);
  }
  const web = w.typed(m.web, "object", "web");
  const configJson = w.typed(web.config_json, "str", "web.config_json");
  let same;
  try {
    same = JSON.stringify(sortKeys(JSON.parse(configJson))) === JSON.stringify(sortKeys(config));
  } catch {
    same = false;
  }
  if (!same) w.fail("web.config_json", "is not the manifest's config");
  const files = w.typed(m.files ?? {}, "object", "files");
  for (const [rel, digest] of Object.entries(files)) {
    if (typeof digest !== "string" || !SHA256.test(digest)) w.fail(`files.${rel}`, "must be a sha256 digest (64 lowercase hex digits)");
  }
  w.typed(m.initial_state, "str", "initial_state");
  w.typed(m.checkpoint, "str", "checkpoint");
  const graphs = w.typed(m.graphs, "object", "graphs");
  if (!isObject(graphs.onnx)) w.fail("graphs", "has no 'onnx' graph (the web runtime runs ONNX graphs)");
  for (const [target, entry] of Object.entries(graphs)) checkStepEntry(w, `graphs.${target}`, entry, config, m);
  const patching = m.patching ?? { kind: "fixed", patch_size: config.patch_size };
  w.typed(patching, "object", "patching");
  if (patching.kind !== config.patching && !(patching.kind === "fixed" && config.patching === undefined)) {
    w.fail("patching.kind", `is ${show(patching.kind)}, the config's patching is '${config.patching}'`);
  }
  if (patching.kind === "fixed") {
    if (w.typed(patching.patch_size, "int", "patching.patch_size") !== config.patch_size) {
      w.fail("patching.patch_size", `is ${patching.patch_size}, the config's is ${config.patch_size}`);
    }
  } else {
    w.typed(patching.threshold, "float", "patching.threshold");
    w.typed(patching.relative_threshold, "float", "patching.relative_threshold", true);
    for (const key of ["max_patch_len", "entropy_context_len"]) {
      const v = w.typed(patching[key], "int", `patching.${key}`);
      if (v < 1 || v >= MAX_DIM) w.fail(`patching.${key}`, "must be at least 1");
    }
    for (const [t, e] of Object.entries(w.typed(patching.graphs ?? {}, "object", "patching.graphs"))) checkGraphEntry(w, `patching.graphs.${t}`, e);
  }
  const decode = m.decode;
  if (decode !== undefined && decode !== null) {
    w.typed(decode, "object", "decode");
    for (const key of ["segment_len", "context_len", "memory_chunks"]) {
      if (w.typed(decode[key], "int", `decode.${key}`) !== config[key]) w.fail(`decode.${key}`, `is ${decode[key]}, the config's is ${config[key]}`);
    }
    const names = new Set();
    w.typed(decode.caches, "list", "decode.caches").forEach((c, i) => {
      names.add(checkTensor(w, `decode.caches[${i}]`, c, names));
      const max = w.typed(c.max_length, "int", `decode.caches[${i}].max_length`);
      if (max < 0 || max >= MAX_DIM) w.fail(`decode.caches[${i}].max_length`, "must be in 0..2^31");
    });
    for (const [t, gs] of Object.entries(w.typed(decode.graphs, "object", "decode.graphs"))) {
      for (const [name, e] of Object.entries(w.typed(gs, "object", `decode.graphs.${t}`))) checkGraphEntry(w, `decode.graphs.${t}.${name}`, e);
    }
  }
  const layout = w.typed(m.svf_layout, "list", "svf_layout", true);
  if (layout) {
    let offset = 0;
    layout.forEach((e, i) => {
      w.typed(e, "object", `svf_layout[${i}]`);
      w.typed(e.name, "str", `svf_layout[${i}].name`);
      if (w.typed(e.offset, "int", `svf_layout[${i}].offset`) !== offset) w.fail(`svf_layout[${i}].offset`, `is ${e.offset}, expected ${offset} (layers tile svf_z in order)`);
      if (w.typed(e.rank, "int", `svf_layout[${i}].rank`) < 1) w.fail(`svf_layout[${i}].rank`, "must be at least 1");
      offset += e.rank;
    });
    if (m.svf_rank !== undefined && offset !== m.svf_rank) w.fail("svf_layout", `covers ${offset} values, svf_rank is ${m.svf_rank}`);
  }
  w.typed(m.experts ?? [], "list", "experts").forEach((e, i) => {
    w.typed(e, "object", `experts[${i}]`);
    for (const key of ["name", "file"]) w.typed(e[key], "str", `experts[${i}].${key}`);
  });
  const dispatch = w.typed(m.dispatch ?? {}, "object", "dispatch", true) ?? {};
  w.typed(dispatch.experts ?? [], "list", "dispatch.experts").forEach((n, i) => w.typed(n, "str", `dispatch.experts[${i}]`));
  return config;
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isObject(v)) return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

// manifest.manifest_paths: (field, path) for every path outside the provenance sections.
export function manifestPaths(m, url) {
  const found = Object.keys(m.files ?? {}).map((rel) => [`files.${rel}`, rel]);
  const walk = (node, field) => {
    if (isObject(node)) {
      for (const [key, value] of Object.entries(node)) {
        const at = field ? `${field}.${key}` : key;
        if (!field && PROVENANCE.has(key)) continue;
        if (PATH_KEYS.has(key) && !isObject(value) && !Array.isArray(value)) {
          if (typeof value !== "string") new Where(url).fail(at, `must be a relative path, got ${typeof value}`);
          found.push([at, value]);
        } else if (key !== "files" || field) {
          walk(value, at);
        }
      }
    } else if (Array.isArray(node)) {
      node.forEach((v, i) => walk(v, `${field}[${i}]`));
    }
  };
  walk(m, "");
  return found;
}

// bundle.resolve_inside, over HTTP: a relative path with no '..', no drive, no backslash, as a URL that
// stays under the bundle's (every part percent-encoded, so "http:" or "?" in a name cannot leave it).
export function resolveInside(base, rel, field) {
  if (typeof rel !== "string" || !rel || rel.includes("\0") || rel.includes("\\")) {
    throw new NeatError(`bundle ${base}: '${field}' is not a relative path (${show(rel)})`);
  }
  const parts = rel.split("/");
  if (rel.startsWith("/") || /^[A-Za-z]:/.test(rel) || parts.includes("..")) {
    throw new NeatError(`bundle ${base}: '${field}' names '${rel}', a path outside the bundle: refused`);
  }
  return base + parts.filter((p) => p && p !== ".").map(encodeURIComponent).join("/");
}

const canonical = (rel) => rel.split("/").filter((p) => p && p !== ".").join("/");

async function fetchBytes(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (e) {
    throw new NeatError(`cannot fetch ${what} ${url}: ${e.message}`);
  }
  if (!response.ok) throw new NeatError(`cannot fetch ${what} ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

export class Bundle {
  constructor(base, manifest, config, contents) {
    this.base = base;
    this.manifest = manifest;
    this.config = config;
    this.contents = contents; // canonical path -> verified bytes
  }

  // The verified bytes of a file the manifest names (bundle.Bundle.file).
  file(rel, field = "file") {
    resolveInside(this.base, rel, field);
    const bytes = this.contents.get(canonical(rel));
    if (!bytes) throw new NeatError(`bundle ${this.base}: ${rel} is not listed in the manifest's checksums (an unverified file): refused`);
    return bytes;
  }

  get patching() {
    return this.manifest.patching ?? { kind: "fixed", patch_size: this.config.patch_size };
  }

  // The state of a fresh stream, checked against the step graph's spec (bundle.check_state_tensors).
  initialState() {
    const what = `initial state of bundle ${this.base}`;
    const [tensors] = parseSafetensors(this.file(this.manifest.initial_state, "initial_state"), what);
    checkStateTensors(tensors, this.manifest.graphs.onnx, what);
    return Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k.slice(STATE_IN.length), v]));
  }
}

export function checkStateTensors(tensors, spec, what) {
  const wanted = new Map(spec.inputs.filter((t) => t.name.startsWith(STATE_IN)).map((t) => [t.name, t]));
  for (const name of [...new Set([...Object.keys(tensors), ...wanted.keys()])].sort()) {
    if (!(name in tensors) || !wanted.has(name)) {
      throw new NeatError(`${what} does not match the graph: tensor '${name}' is ${wanted.has(name) ? "missing" : "not a state input of the graph"}`);
    }
  }
  for (const [name, t] of wanted) {
    const a = tensors[name];
    const dimsOk = a.shape.length === t.shape.length
      && a.shape.every((got, i) => (t.shape[i] === "batch" ? got === 1 : typeof t.shape[i] === "string" || got === t.shape[i]));
    if (a.dtype !== t.dtype || !dimsOk) {
      throw new NeatError(`${what} does not match the graph: '${name}' is ${a.dtype} [${a.shape}], the graph takes ${t.dtype} [${t.shape}]`);
    }
    if (!isFinite32(a)) throw new NeatError(`${what}: '${name}' holds NaN or infinite values`);
  }
}

// bundle.open_bundle over HTTP: the manifest, every path, every listed file's sha256 (all fetched and
// hashed before anything is run), and the initial state.
export async function openBundle(baseUrl, onProgress = () => {}) {
  const base = baseUrl.endsWith("/") ? baseUrl : baseUrl + "/";
  const url = base + MANIFEST;
  const raw = await fetchBytes(url, "the bundle manifest");
  if (raw.byteLength > MAX_MANIFEST_BYTES) throw new NeatError(`${url} is not a NEAT bundle manifest (over ${MAX_MANIFEST_BYTES >> 20} MB)`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (e) {
    throw new NeatError(`corrupted bundle manifest ${url}: ${e.message.slice(0, 200)}`);
  }
  if (!isObject(manifest) || manifest.format !== FORMAT) throw new NeatError(`${url} is not a NEAT bundle manifest`);
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new NeatError(`bundle ${base} has format version ${String(manifest.format_version).slice(0, 40)}, this runtime reads version ${FORMAT_VERSION}: re-export it with this version`);
  }
  const config = checkManifest(manifest, url);
  for (const [field, rel] of manifestPaths(manifest, url)) resolveInside(base, rel, field);
  const contents = new Map();
  const listed = Object.entries(manifest.files ?? {});
  let done = 0;
  let failed = false; // the fetches still running after one failed report nothing more
  await Promise.all(listed.map(async ([rel, digest]) => {
    try {
      const bytes = await fetchBytes(resolveInside(base, rel, `files.${rel}`), `bundle file ${rel} of`);
      if ((await sha256Hex(bytes)) !== digest) {
        throw new NeatError(`bundle ${base} is corrupted: ${rel} differs from the manifest (sha256 mismatch)`);
      }
      contents.set(canonical(rel), bytes);
    } catch (e) {
      failed = true;
      throw e;
    }
    if (!failed) onProgress(++done, listed.length);
  }));
  return new Bundle(base, manifest, config, contents);
}

export { numel };
