// Chain: the newest signed head (height, tree size, root, ledger time, proposer, signatures),
// throughput measured from successive heads (entries per second of ledger time), the nodes
// that signed and this node's own status (GET /v1/node/status), the latest blocks with their
// entry kinds (GET /v1/blocks/{h}), and a button that checks the newest entry's proof bundle
// (GET /v1/entries/{i}/proof) in the browser.

import { getJson } from "./api.js";
import { verifyInto } from "./proofview.js";
import { ago, every, fill, h, iso, notice, num, table } from "./ui.js";

const REFRESH_MS = 2000;
const BLOCKS = 10;
const SPAN_MS = 60000;

/** Entries per second of ledger time between the oldest and newest of `heads` ({size, time}). */
export function throughput(heads) {
  if (heads.length < 2) return null;
  const a = heads[0];
  const b = heads.at(-1);
  const dt = (b.time - a.time) / 1000;
  return dt > 0 ? (b.size - a.size) / dt : null;
}

function kinds(block) {
  const counts = {};
  for (const e of block.entries ?? []) counts[e.kind] = (counts[e.kind] ?? 0) + 1;
  return Object.entries(counts).map(([k, n]) => `${k} × ${n}`).join(", ");
}

export function mountChain(view, { signal }) {
  const headBox = h("div", { id: "chain-head" }, notice("loading…"));
  const nodesBox = h("div", { id: "chain-nodes" });
  const blocksBox = h("div", { id: "chain-blocks" });
  const proofBox = h("div", { id: "chain-proof" });
  const verifyBtn = h("button", { type: "button", id: "verify-latest" }, "Verify the newest entry");
  fill(view,
    h("section", { class: "card" }, h("h2", {}, "Chain"), headBox),
    h("section", { class: "card" }, h("h2", {}, "Nodes"), nodesBox),
    h("section", { class: "card" }, h("h2", {}, "Latest blocks"), blocksBox),
    h("section", { class: "card" }, h("h2", {}, "Proof check"), verifyBtn, proofBox));

  const heads = [];
  const blocks = new Map();
  let head = null;
  verifyBtn.addEventListener("click", () => {
    if (head && head.tree_size > 0) {
      verifyInto(proofBox, `/v1/entries/${head.tree_size - 1}/proof?height=${head.height}`, signal)
        .catch((err) => { if (err.name !== "AbortError") throw err; });
    }
  });

  every(REFRESH_MS, async () => {
    let status = {};
    try {
      [head, status] = await Promise.all([getJson("/v1/chain/head", { signal }),
        getJson("/v1/node/status", { signal }).catch((err) => {
          if (err.name === "AbortError") throw err;
          return {};
        })]);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      fill(headBox, notice(`cannot read the head: ${err.message}`, "error"));
      return;
    }
    if (!heads.length || heads.at(-1).height !== head.height) {
      heads.push({ height: head.height, size: head.tree_size, time: head.time });
    }
    while (heads.length > 2 && head.time - heads[0].time > SPAN_MS) heads.shift();
    const rate = throughput(heads);
    fill(headBox, table(["", ""], [
      ["height", h("span", { id: "chain-height" }, String(head.height))],
      ["tree size (entries)", h("span", { id: "chain-size" }, String(head.tree_size))],
      ["throughput", rate === null ? "measuring…" : `${num(rate, 1)} entries/s of ledger time (last ${heads.length} heads)`],
      ["ledger time", `${iso(head.time)} (${ago(head.time)})`],
      ["tree root", h("code", {}, head.tree_root)],
      ["block hash", h("code", {}, head.hash)],
      ["chain", head.chain], ["proposer", head.proposer],
      ["signatures", (head.signatures ?? []).map((s) => s.node).join(", ") || "none"],
    ], { class: "kv" }));
    const rejected = Object.values(status.rejected ?? {}).reduce((a, b) => a + b, 0);
    const signers = new Set((head.signatures ?? []).map((s) => s.node));
    if (status.node) signers.add(status.node);
    fill(nodesBox, table(["node", "signed the head", "this node", "broker", "readings/s", "queue",
      "quarantined", "uptime"], [...signers].sort().map((n) => {
      const me = n === status.node;
      return [n, head.signatures?.some((s) => s.node === n) ? "yes" : "no", me ? "yes" : "",
        me ? (status.broker_connected ? "connected" : "disconnected") : "–",
        me ? num(status.readings_per_s, 1) : "–", me ? String(status.queue ?? "–") : "–",
        me ? String(rejected) : "–", me ? `${num(status.uptime_s, 0)} s` : "–"];
    })));

    const wanted = [];
    for (let hgt = head.height; hgt >= 0 && wanted.length < BLOCKS; hgt--) wanted.push(hgt);
    await Promise.all(wanted.filter((x) => !blocks.has(x)).map(async (x) => {
      try { blocks.set(x, await getJson(`/v1/blocks/${x}`, { signal })); } catch (err) {
        if (err.name === "AbortError") throw err;
      }
    }));
    for (const x of blocks.keys()) if (!wanted.includes(x)) blocks.delete(x);
    fill(blocksBox, table(["height", "ledger time", "entries", "kinds", "hash", "proposer"],
      wanted.filter((x) => blocks.has(x)).map((x) => {
        const b = blocks.get(x);
        return h("tr", { dataset: { height: String(x) } }, h("td", {}, String(x)), h("td", {}, iso(b.time)),
          h("td", { class: "n" }, String(b.count)), h("td", {}, kinds(b)),
          h("td", {}, h("code", {}, `${b.hash.slice(0, 16)}…`)), h("td", {}, b.proposer));
      }), { class: "blocks" }));
  }, signal);
}
