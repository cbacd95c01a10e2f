// The chat page: streams answers from /v1/chat/completions (SSE over fetch), shows the citations
// (the passage text on click) and the stage timings from the "bakeoff" extension field, and
// answers one question in every mode side by side. No dependencies, nothing from the network
// but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = [["retrieval", "retrieval_ms"], ["prompt", "prompt_build_ms"], ["kv", "kv_ms"],
                ["prefill", "prefill_ms"], ["decode", "decode_ms"]];
let apiKey = sessionStorage.getItem("bakeoff-key") || "";

// A key in the URL's fragment (#key=...) is never sent to the server with the page request.
const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
if (fromHash) { apiKey = fromHash; sessionStorage.setItem("bakeoff-key", apiKey); history.replaceState(null, "", location.pathname); }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = "Bearer " + apiKey;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function apiError(response) {
  if (response.status === 401) $("key-box").hidden = false;
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { $("status").textContent = "not connected"; showError(await apiError(response)); return; }
  const models = (await response.json()).data.map((m) => m.id);
  $("model").replaceChildren(...models.map((id) => new Option(id, id)));
  $("status").textContent = "ready: " + models.join(", ");
  showError("");
}

function newAnswer(container, model) {
  const node = $("answer-template").content.firstElementChild.cloneNode(true);
  node.dataset.model = model;
  node.querySelector(".model").textContent = model;
  container.append(node);
  return node;
}

// One question in one mode, streamed into `node`; resolves when the stream ends.
async function ask(question, model, node) {
  const text = node.querySelector(".text");
  text.classList.add("pending");
  const sent = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model, stream: true, max_tokens: Number($("max-tokens").value) || 64,
                           messages: [{ role: "user", content: question }] }),
  });
  if (!response.ok) { text.classList.remove("pending"); text.textContent = "⚠ " + await apiError(response); return; }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", first = true;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) { text.textContent += " ⚠ " + chunk.error.message; continue; }
        const piece = chunk.choices[0].delta.content || "";
        if (first && piece) {
          first = false;
          node.querySelector(".ttft").textContent = "first token " + Math.round(performance.now() - sent) + " ms";
          node.dataset.ttftMs = Math.round(performance.now() - sent);
        }
        text.textContent += piece;
        if (chunk.bakeoff) showExtension(node, chunk.bakeoff);
      }
    }
  }
  text.classList.remove("pending");
  node.dataset.done = "1";
}

function showExtension(node, ext) {
  const t = ext.timings;
  const bar = node.querySelector(".bar"), legend = node.querySelector(".legend");
  const parts = STAGES.filter(([, key]) => t[key] > 0);
  bar.replaceChildren(...parts.map(([name, key]) => {
    const span = document.createElement("span");
    span.className = "s-" + name;
    span.style.width = (100 * t[key] / t.total_ms) + "%";
    span.title = name + " " + t[key].toFixed(1) + " ms";
    return span;
  }));
  legend.innerHTML = parts.map(([name, key]) => `<i class="s-${name}"></i>${name} ${Math.round(t[key])}`).join("")
    + ` &nbsp;· server TTFT ${Math.round(t.ttft_ms)} ms, total ${Math.round(t.total_ms)} ms`;
  const list = node.querySelector(".citations");
  list.replaceChildren(...ext.citations.map((c) => {
    const item = document.createElement("li");
    item.value = c.label;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "cite" + (c.cited ? " cited" : "");
    button.textContent = `[${c.label}] ${c.source.split("/").pop()} — ${c.heading || "passage"}`;
    button.title = c.cited ? "the answer cites this passage" : "given to the model, not cited";
    const quote = document.createElement("blockquote");
    quote.textContent = c.text;
    quote.hidden = true;
    button.addEventListener("click", () => { quote.hidden = !quote.hidden; });
    item.append(button, quote);
    return item;
  }));
}

async function run(all) {
  const question = $("question").value.trim();
  if (!question) { showError("Type a question first."); return; }
  showError("");
  for (const b of [$("ask"), $("ask-all")]) b.disabled = true;
  $("single").hidden = all; $("all").hidden = !all;
  const container = all ? $("all") : $("single");
  container.replaceChildren();
  const models = all ? [...$("model").options].map((o) => o.value) : [$("model").value];
  try {
    // One after another: the server answers one request at a time anyway, in order of arrival.
    for (const model of models) await ask(question, model, newAnswer(container, model));
  } catch (e) {
    showError("The server did not answer: " + e.message);
  } finally {
    for (const b of [$("ask"), $("ask-all")]) b.disabled = false;
  }
}

$("ask-form").addEventListener("submit", (e) => { e.preventDefault(); run(false); });
$("ask-all").addEventListener("click", () => run(true));
$("question").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); run(false); } });
$("save-key").addEventListener("click", () => {
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("bakeoff-key", apiKey);
  $("key-box").hidden = true;
  loadModels();
});
loadModels();
