"use strict";
// The rerank playground: a query and documents (one per line) to POST /v1/rerank on a
// reranker, the documents shown best first with their scores. Loaded after app.js, whose
// helpers ($, api, el, authProblem) it uses; shown only when the server has a reranker.

async function loadRerankers() {
  const list = await api("v1/models");
  const names = list.data.filter((c) => c.task === "rerank").map((c) => c.id);
  const select = $("rerank-model");
  select.replaceChildren(...names.map((n) => el("option", n)));
  $("rerank-playground").hidden = names.length === 0;
}

async function rerank() {
  $("rerank-error").textContent = "";
  const docs = $("rerank-docs").value.split("\n").map((s) => s.trim()).filter((s) => s.length);
  const query = $("rerank-query").value.trim();
  if (!query || !docs.length) {
    $("rerank-error").textContent = "Type a query and at least one document.";
    return;
  }
  const button = $("rerank");
  button.disabled = true;
  try {
    const res = await api("v1/rerank", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("rerank-model").value, query, documents: docs }),
    });
    const body = $("rerank-results").querySelector("tbody");
    body.replaceChildren();
    res.results.forEach((r, rank) => {
      const tr = el("tr");
      const td = el("td", r.relevance_score.toFixed(4), "num score");
      td.dataset.i = String(r.index);
      tr.append(el("td", String(rank + 1), "num"), td, el("td", docs[r.index], "text"));
      body.append(tr);
    });
    $("rerank-results").hidden = false;
  } catch (err) {
    $("rerank-error").textContent = authProblem(err) || err.message;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("rerank").addEventListener("click", rerank);
  loadRerankers().catch(() => {});
});
