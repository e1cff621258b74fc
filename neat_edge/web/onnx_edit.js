// One edit of an ONNX model's protobuf bytes: named graph inputs become initializers with given values.
// The decode graphs take the SVF layers' weights (decode_svf's outputs, a function of z) as inputs; ONNX
// Runtime Web copies every input into WebAssembly memory on every run (2.6 MB per byte for decode_byte),
// so the web runtime bakes the weights of the current z into the graphs once per z instead, which also
// lets ONNX Runtime pre-pack them for its matrix products. The graph's ops are untouched.
//
// Wire format (protobuf): ModelProto.graph = 7; GraphProto.initializer = 5, GraphProto.input = 11;
// ValueInfoProto.name = 1; TensorProto.dims = 1, data_type = 2 (FLOAT = 1), name = 8, raw_data = 9.

import { NeatError } from "./safetensors.js";

function readVarint(bytes, at) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (at >= bytes.length) throw new NeatError("truncated ONNX protobuf");
    const b = bytes[at++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, at];
    scale *= 128;
    if (scale > 2 ** 63) throw new NeatError("bad varint in an ONNX protobuf");
  }
}

function varint(value) {
  const out = [];
  let v = value;
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Uint8Array.from(out);
}

// [fieldNumber, wireType, start of the field (tag included), end, payload start, payload end]
function* fields(bytes) {
  let at = 0;
  while (at < bytes.length) {
    const start = at;
    let tag;
    [tag, at] = readVarint(bytes, at);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    let payload = at;
    if (wire === 0) [, at] = readVarint(bytes, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let len;
      [len, payload] = readVarint(bytes, at);
      at = payload + len;
    } else throw new NeatError(`unsupported protobuf wire type ${wire} in an ONNX model`);
    if (at > bytes.length) throw new NeatError("truncated ONNX protobuf");
    yield [field, wire, start, at, payload, at];
  }
}

function lengthDelimited(field, payload) {
  return [varint(field * 8 + 2), varint(payload.length), payload];
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function valueInfoName(bytes) {
  for (const [field, wire, , , p0, p1] of fields(bytes)) if (field === 1 && wire === 2) return decoder.decode(bytes.subarray(p0, p1));
  return "";
}

function floatTensor(name, dims, data) {
  const parts = dims.flatMap((d) => [varint(8), varint(d)]); // dims = 1, varint
  parts.push(varint(16), varint(1)); // data_type = 2: FLOAT
  parts.push(...lengthDelimited(8, encoder.encode(name)));
  parts.push(...lengthDelimited(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength)));
  return concat(parts);
}

// model bytes with every input named in `values` ({name: {dims, data: Float32Array}}) an initializer
export function bakeInputs(model, values) {
  const parts = [];
  let found = 0;
  for (const [field, wire, start, end, p0, p1] of fields(model)) {
    if (field !== 7 || wire !== 2) {
      parts.push(model.subarray(start, end));
      continue;
    }
    const graph = model.subarray(p0, p1);
    const kept = [];
    for (const [gField, gWire, gStart, gEnd, g0, g1] of fields(graph)) {
      if (gField === 11 && gWire === 2 && valueInfoName(graph.subarray(g0, g1)) in values) {
        found++;
        continue;
      }
      kept.push(graph.subarray(gStart, gEnd));
    }
    for (const [name, t] of Object.entries(values)) kept.push(...lengthDelimited(5, floatTensor(name, t.dims, t.data)));
    parts.push(...lengthDelimited(7, concat(kept)));
  }
  if (found !== Object.keys(values).length) throw new NeatError("an ONNX graph lacks an input the web runtime bakes in");
  return concat(parts);
}
