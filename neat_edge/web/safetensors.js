// safetensors files in the browser, with the content digest of neat_edge/tensorfile.py: session states,
// experts, the initial state. A tensor here is {dtype, shape, data} with dtype a numpy name ("float32",
// "int64", ...) and data the matching typed array (BigInt64Array for int64, as ONNX Runtime Web takes).

export const DIGEST_KEY = "content_sha256";

export class NeatError extends Error {
  constructor(message) {
    super(message);
    this.name = "NeatError";
  }
}

// numpy name -> [safetensors dtype, numpy dtype.str (what the digest hashes), typed array]
const DTYPES = {
  float32: ["F32", "<f4", Float32Array],
  float64: ["F64", "<f8", Float64Array],
  float16: ["F16", "<f2", Uint16Array],
  int64: ["I64", "<i8", BigInt64Array],
  int32: ["I32", "<i4", Int32Array],
  int8: ["I8", "|i1", Int8Array],
  uint8: ["U8", "|u1", Uint8Array],
  bool: ["BOOL", "|b1", Uint8Array],
};
const FROM_SAFETENSORS = Object.fromEntries(Object.entries(DTYPES).map(([name, [st]]) => [st, name]));

export function typedArrayFor(dtype) {
  const entry = DTYPES[dtype];
  if (!entry) throw new NeatError(`unsupported tensor dtype ${dtype}`);
  return entry[2];
}

export function tensor(dtype, shape, data) {
  return { dtype, shape: shape.map(Number), data };
}

export function numel(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function bytesOf(t) {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

// Python's json.dumps of a str (ensure_ascii): JSON.stringify, then everything outside space..~ as \uXXXX.
function pyString(s) {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

const encoder = new TextEncoder();

function concat(parts) {
  const total = parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new NeatError("this page is not a secure context (https or localhost): the browser offers no SHA-256 to check the bundle with");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

const byCodePoint = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

// sha256 over every metadata entry (but the digest) and every tensor's name, dtype, shape and bytes: the
// same bytes tensorfile.content_digest hashes, so a state file written here is one Python accepts.
export async function contentDigest(tensors, metadata) {
  const parts = [];
  for (const key of Object.keys(metadata).filter((k) => k !== DIGEST_KEY).sort(byCodePoint)) {
    parts.push(encoder.encode(`[${pyString(key)}, ${pyString(metadata[key])}]`));
  }
  for (const name of Object.keys(tensors).sort(byCodePoint)) {
    const t = tensors[name];
    parts.push(encoder.encode(`[${pyString(name)}, ${pyString(DTYPES[t.dtype][1])}, [${t.shape.join(", ")}]]`));
    parts.push(bytesOf(t));
  }
  return sha256Hex(concat(parts));
}

// (tensors, metadata) of safetensors bytes; every malformed file is one NeatError naming `what`.
export function parseSafetensors(bytes, what) {
  const bad = (why) => new NeatError(`corrupted ${what}: ${why}`);
  if (bytes.byteLength < 8) throw bad("shorter than a safetensors header");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.byteLength - 8) throw bad("its header runs past the end of the file");
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw bad(`bad header (${e.message.slice(0, 120)})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw bad("bad header");
  const meta = header.__metadata__ ?? {};
  if (typeof meta !== "object" || meta === null || Array.isArray(meta) || !Object.values(meta).every((v) => typeof v === "string")) {
    throw bad("bad metadata");
  }
  const data = bytes.subarray(8 + headerLen);
  const tensors = {};
  const spans = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const dtype = FROM_SAFETENSORS[entry?.dtype];
    const shape = entry?.shape;
    const offsets = entry?.data_offsets;
    if (!dtype || !Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)
        || !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isInteger(d) && d >= 0)) {
      throw bad(`tensor '${name.slice(0, 80)}' has a bad header entry`);
    }
    const [begin, end] = offsets;
    const Typed = DTYPES[dtype][2];
    if (end < begin || end > data.byteLength || end - begin !== numel(shape) * Typed.BYTES_PER_ELEMENT) {
      throw bad(`tensor '${name.slice(0, 80)}' does not fit its data`);
    }
    spans.push([begin, end]);
    tensors[name] = tensor(dtype, shape, new Typed(data.slice(begin, end).buffer)); // a copy: aligned
  }
  spans.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [begin, end] of spans) {
    if (begin !== at) throw bad("tensor data overlaps or leaves gaps");
    at = end;
  }
  if (at !== data.byteLength) throw bad("tensor data does not cover the file");
  return [tensors, meta];
}

// tensors + metadata (+ their digest) as safetensors bytes, in the layout the Rust writer uses: an
// 8-byte header length, the JSON header padded with spaces to 8 bytes, the tensors' bytes in order.
export async function writeSafetensors(tensors, metadata) {
  const meta = { ...metadata, [DIGEST_KEY]: await contentDigest(tensors, metadata) };
  const header = { __metadata__: meta };
  const parts = [];
  let offset = 0;
  for (const name of Object.keys(tensors).sort(byCodePoint)) {
    const t = tensors[name];
    const raw = bytesOf(t);
    header[name] = { dtype: DTYPES[t.dtype][0], shape: t.shape, data_offsets: [offset, offset + raw.byteLength] };
    parts.push(raw);
    offset += raw.byteLength;
  }
  let text = JSON.stringify(header);
  text += " ".repeat((8 - ((encoder.encode(text).byteLength) % 8)) % 8);
  const head = encoder.encode(text);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(head.byteLength), true);
  return concat([len, head, ...parts]);
}

// A safetensors file checked against its digest (require: a file without one is refused).
export async function readTensors(bytes, what, requireDigest = true) {
  const [tensors, meta] = parseSafetensors(bytes, what);
  const digest = meta[DIGEST_KEY];
  if (digest === undefined && requireDigest) throw new NeatError(`corrupted ${what}: it carries no content digest`);
  if (digest !== undefined && digest !== (await contentDigest(tensors, meta))) {
    throw new NeatError(`corrupted ${what}: its content does not match its digest`);
  }
  return [tensors, meta];
}

export function isFinite32(t) {
  if (!(t.data instanceof Float32Array || t.data instanceof Float64Array)) return true;
  for (let i = 0; i < t.data.length; i++) if (!Number.isFinite(t.data[i])) return false;
  return true;
}
