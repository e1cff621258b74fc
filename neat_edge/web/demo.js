// The demo page: a prompt, the streamed output, bytes/s, and the stream's state kept in IndexedDB (saved
// after every generation, loaded when the page opens), so the memory survives a reload. Query options:
// ?backend=wasm|webgpu&threads=N. window.neatDemo holds the session once `ready` resolves (for tests).

import { openSession } from "./neat.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const DB = "neat-edge";
const STORE = "states";

function db() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function store(mode, fn) {
  const conn = await db();
  try {
    return await new Promise((resolve, reject) => {
      const tx = conn.transaction(STORE, mode);
      const request = fn(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
    });
  } finally {
    conn.close();
  }
}

const saved = (key) => store("readonly", (s) => s.get(key));
const save = (key, bytes) => store("readwrite", (s) => s.put(bytes, key));
const forget = (key) => store("readwrite", (s) => s.delete(key));

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function describe(session) {
  return `stream at byte ${session.position} (${session.pending.length} of the current ${session.config.segment_len}-byte segment pending)`;
}

async function main() {
  const threads = params.has("threads") ? Number(params.get("threads")) : undefined;
  const session = await openSession("./", { backend: params.get("backend") ?? "wasm", threads,
    onProgress: (done, total) => status(`checking the bundle: ${done} of ${total} files`) });
  const key = `state:${session.modelId}`;
  const previous = await saved(key);
  let restored = false;
  if (previous) {
    try {
      await session.loadState(new Uint8Array(previous));
      restored = true;
    } catch (e) {
      await forget(key); // a state this model cannot continue: start fresh, say so
      status(`stored state refused (${e.message}); starting fresh`, true);
    }
  }
  window.neatDemo.session = session;
  window.neatDemo.restored = restored;
  status(`${restored ? "memory restored from IndexedDB: " : "fresh stream: "}${describe(session)}`);
  $("generate").disabled = $("forget").disabled = false;

  $("generate").onclick = async () => {
    $("generate").disabled = $("forget").disabled = true;
    const out = $("output");
    const text = $("prompt").value;
    const span = document.createElement("span");
    span.className = "prompt";
    span.textContent = text;
    out.append(span);
    const decoder = new TextDecoder();
    const count = Number($("count").value);
    const options = { temperature: Number($("temperature").value), seed: Number($("seed").value) };
    try {
      const t0 = performance.now();
      let n = 0;
      let first = 0;
      for await (const [byte] of session.stream(new TextEncoder().encode(text), count, options)) {
        if (n === 0) first = performance.now();
        out.append(decoder.decode(Uint8Array.of(byte), { stream: true }));
        n++;
        if (n % 16 === 0) {
          $("stats").textContent = `${n} bytes, ${(n / ((performance.now() - t0) / 1000)).toFixed(0)} bytes/s`;
          await new Promise((resolve) => setTimeout(resolve)); // let the page paint the text so far
        }
      }
      out.append(decoder.decode());
      const seconds = (performance.now() - t0) / 1000;
      $("stats").textContent = `${n} bytes in ${seconds.toFixed(2)} s: ${(n / seconds).toFixed(0)} bytes/s`
        + (n > 1 ? ` (${((n - 1) / ((performance.now() - first) / 1000)).toFixed(0)} bytes/s after the first)` : "");
      await save(key, await session.saveState());
      status(`saved to IndexedDB: ${describe(session)}`);
    } catch (e) {
      status(e.message, true);
    } finally {
      $("generate").disabled = $("forget").disabled = false;
    }
  };

  $("forget").onclick = async () => {
    session.reset();
    await forget(key);
    $("output").textContent = "";
    $("stats").innerHTML = "&nbsp;";
    status(`forgotten: ${describe(session)}`);
  };
}

window.neatDemo = { ready: null };
window.neatDemo.ready = main().catch((e) => {
  status(`error: ${e.message}`, true);
  throw e;
});
