// preflexor-local playground: streams one question through /v1/chat/completions with the transcript and draws
// each round as a card. Plain JS, no dependencies. Model text is only ever set as textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const CONFIG = JSON.parse($("config").textContent || "{}");
const STOP_REASONS = {
  rounds: "it ran every round",
  nothing_to_fix: "the critic found nothing to fix",
  answers_agree: "two rounds' answers agreed",
};
const LABEL = /^\[round (\d+) · (.+)\]\n?$/; // the server's "[round N · what]" line opening each model call
let controller = null; // aborts the running request (Stop): the server cancels it when the connection drops

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// -- word diff ---------------------------------------------------------------------------------------------------
// Longest common subsequence over words (each with the space after it, compared without it); the common prefix and
// suffix are cut first. Between two unchanged stretches the removed words come first, then the added ones, so a
// rewritten phrase reads as one deletion and one insertion rather than alternating words.
function wordDiff(before, after) {
  const split = (text) => text.match(/^\s+|\S+\s*/g) || [];
  const a = split(before), b = split(after);
  const ka = a.map((t) => t.trim()), kb = b.map((t) => t.trim());
  let start = 0;
  while (start < a.length && start < b.length && ka[start] === kb[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && ka[endA - 1] === kb[endB - 1]) { endA--; endB--; }
  const ops = b.slice(0, start).map((t) => ["=", t]);
  const n = endA - start, m = endB - start;
  if (n * m > 4e6) { // too long to align here: show it as replaced
    a.slice(start, endA).forEach((t) => ops.push(["-", t]));
    b.slice(start, endB).forEach((t) => ops.push(["+", t]));
  } else {
    const w = m + 1, lcs = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        lcs[i * w + j] = ka[start + i] === kb[start + j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && ka[start + i] === kb[start + j]) { ops.push(["=", b[start + j]]); i++; j++; }
      else if (j < m && (i === n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j])) { ops.push(["+", b[start + j]]); j++; }
      else { ops.push(["-", a[start + i]]); i++; }
    }
  }
  b.slice(endB).forEach((t) => ops.push(["=", t]));
  const merged = [];
  let dels = "", ins = "";
  const flush = () => {
    if (dels) merged.push(["-", dels]);
    if (ins) merged.push(["+", ins]);
    dels = ins = "";
  };
  for (const [op, t] of ops) {
    if (op === "-") dels += t;
    else if (op === "+") ins += t;
    else {
      flush();
      const last = merged[merged.length - 1];
      if (last && last[0] === "=") last[1] += t;
      else merged.push(["=", t]);
    }
  }
  flush();
  return merged;
}

function renderDiff(before, after) {
  const box = el("div", "text diff");
  for (const [op, text] of wordDiff(before, after)) {
    if (op === "=") box.append(document.createTextNode(text));
    else box.append(el(op === "+" ? "ins" : "del", null, text));
  }
  return box;
}

// -- cards -------------------------------------------------------------------------------------------------------
function section(card, title, body) {
  const box = el("div", "section");
  const h = el("h4", null, title);
  box.append(h, typeof body === "string" ? el("div", "text", body) : body);
  card.append(box);
  return box;
}

// Live view while the stream runs: each labelled call gets a section in its round's card.
class LiveCards {
  constructor(root) { this.root = root; this.cards = new Map(); this.target = null; }
  card(round) {
    if (!this.cards.has(round)) {
      const card = el("article", "card live");
      card.dataset.round = round;
      card.append(el("h3", null, `Round ${round}`));
      this.root.append(card);
      this.cards.set(round, card);
    }
    return this.cards.get(round);
  }
  reasoning(text) {
    const m = LABEL.exec(text.replace(/^\n+/, ""));
    if (m) {
      const what = m[2].split(" · ").pop();
      this.target = section(this.card(Number(m[1])), what, "").querySelector(".text");
      setStatus(`round ${m[1]} · ${what}…`);
      return;
    }
    if (this.target) this.target.textContent += text;
  }
}

function passagesList(round) {
  const passages = Array.isArray(round.passages) ? round.passages : null;
  if (!passages || !passages.length) return null;
  const cited = Array.isArray(round.cited) ? new Set(round.cited) : new Set();
  const shown = passages.filter((p) => cited.has(p.n));
  const box = el("div", "cited");
  box.append(el("div", "legend", shown.length ? `cited ${shown.length} of ${passages.length} passages` : `cited none of ${passages.length} passages`));
  if (shown.length) {
    const list = el("ol", "passages");
    for (const p of shown) {
      const item = el("li");
      item.value = p.n;
      item.append(el("span", "source", p.source ? `${p.source}: ` : ""), document.createTextNode(p.text || ""));
      list.append(item);
    }
    box.append(list);
  }
  return box;
}

function renderRound(round, previous) {
  const card = el("article", "card");
  card.dataset.round = round.index;
  card.append(el("h3", null, `Round ${round.index}`));
  if (previous) {
    const diff = el("div");
    diff.append(el("div", "legend", `against round ${previous.index}'s thinking: added, removed`), renderDiff(previous.thinking || "", round.thinking || ""));
    section(card, round.thinking_source === "improved" ? "improved thinking" : "thinking", diff);
  } else {
    section(card, round.thinking_closed === false ? "thinking (closed at the budget)" : "thinking", round.thinking || "");
  }
  if (round.reflection) section(card, "reflection", round.reflection);
  section(card, "answer", round.answer || "");
  if (round.critique !== null && round.critique !== undefined) {
    const body = el("div");
    body.append(el("div", "text", round.critique));
    const cited = passagesList(round);
    if (cited) body.append(cited);
    const box = section(card, round.critique_source === "reflection" ? "critique (its own reflection)" : "critique", body);
    if (round.verdict) {
      box.querySelector("h4").append(el("span", `verdict ${round.verdict === "fix" ? "fix" : "nothing"}`, round.verdict));
    }
  }
  return card;
}

function renderTranscript(t) {
  const cards = $("cards");
  cards.replaceChildren();
  (t.rounds || []).forEach((round, i) => cards.append(renderRound(round, i > 0 ? t.rounds[i - 1] : null)));
  const why = t.stop_reason ? STOP_REASONS[t.stop_reason] || t.stop_reason : `not reported (${(t.rounds || []).length} round(s) ran)`;
  $("stop-reason").textContent = why + (t.integrated ? "; the final answer merges the rounds' answers" : "");
}

// -- the request -------------------------------------------------------------------------------------------------
function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function requestBody(question) {
  const preflexor = { transcript: true, rounds: numberOrNull("rounds"), mode: $("mode").value || null };
  const budget = numberOrNull("budget");
  if (budget !== null) preflexor.thinking_budget = budget;
  const body = { messages: [{ role: "user", content: question }], stream: true, stream_options: { include_usage: true }, preflexor };
  const temperature = numberOrNull("temperature");
  if (temperature !== null) body.temperature = temperature;
  const maxTokens = numberOrNull("max-tokens");
  if (maxTokens !== null) body.max_tokens = maxTokens;
  return body;
}

async function errorText(resp) {
  try {
    const data = await resp.json();
    if (data && data.error && data.error.message) return `${resp.status}: ${data.error.message}`;
  } catch (e) { /* not JSON */ }
  return `${resp.status}: ${resp.statusText || "request failed"}`;
}

// Server-sent events from a fetch body: yields each data payload (comments such as keep-alives are skipped).
async function* sseData(body) {
  const reader = body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

async function ask(ev) {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question || controller) return;
  showError("");
  $("cards").replaceChildren();
  $("result").hidden = true;
  $("final-answer").textContent = "";
  $("stop-reason").textContent = "";
  $("rate").textContent = "";
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  controller = new AbortController();
  $("ask").disabled = true;
  $("stop").disabled = false;
  setStatus("waiting for the server…");
  const live = new LiveCards($("cards"));
  const t0 = performance.now();
  let transcript = null, usage = null, answer = "", finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(requestBody(question)), signal: controller.signal });
    if (!resp.ok) { showError(await errorText(resp)); setStatus("failed"); return; }
    for await (const data of sseData(resp.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) { showError(chunk.error.message || "the server reported an error"); setStatus("failed"); return; }
      if (chunk.usage) usage = chunk.usage;
      if (chunk.preflexor && chunk.preflexor.transcript) transcript = chunk.preflexor.transcript;
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      if (choice.finish_reason) finish = choice.finish_reason;
      const delta = choice.delta || {};
      if (delta.reasoning_content) live.reasoning(delta.reasoning_content);
      if (delta.content) {
        answer += delta.content;
        $("result").hidden = false;
        $("final-answer").textContent = answer;
        setStatus("final answer…");
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    if (transcript) renderTranscript(transcript);
    $("final-answer").textContent = answer || (transcript ? transcript.final_answer : "") || "(no answer: see the last card)";
    const tokens = usage ? usage.completion_tokens : transcript && transcript.totals ? transcript.totals.completion_tokens : null;
    const engine = transcript && transcript.totals && transcript.totals.seconds ? transcript.totals.seconds : seconds;
    $("rate").textContent = tokens === null ? `${seconds.toFixed(1)} s` : `${(tokens / engine).toFixed(1)} tokens/s (${tokens} tokens in ${engine.toFixed(1)} s)`;
    $("result").hidden = false;
    setStatus(finish === "length" ? `done in ${seconds.toFixed(1)} s (the answer was cut at max tokens)` : `done in ${seconds.toFixed(1)} s`);
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped: the server cancels the request");
    else { showError(`the request failed: ${err.message}`); setStatus("failed"); }
  } finally {
    controller = null;
    $("ask").disabled = false;
    $("stop").disabled = true;
  }
}

function init() {
  $("model-id").textContent = CONFIG.model || "?";
  const modes = CONFIG.modes || { thinking: "", reflect: "" };
  for (const [name, summary] of Object.entries(modes)) {
    const option = el("option", null, name);
    option.value = name;
    option.title = summary;
    $("mode").append(option);
  }
  const d = CONFIG.defaults || {};
  if (d.mode) $("mode").value = d.mode;
  if (d.rounds) $("rounds").value = d.rounds;
  if (CONFIG.max_rounds) $("rounds").max = CONFIG.max_rounds;
  if (d.temperature !== undefined) $("temperature").value = d.temperature;
  if (d.max_tokens) $("max-tokens").value = d.max_tokens;
  if (CONFIG.max_tokens_limit) $("max-tokens").max = CONFIG.max_tokens_limit;
  if (d.thinking_budget) $("budget").value = d.thinking_budget;
  if (CONFIG.key_required) $("api-key").placeholder = "this server requires a key";
  $("ask-form").addEventListener("submit", ask);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
}

init();
