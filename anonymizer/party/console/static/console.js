// The party console's page: the form from /api/state, one button per step, progress while a
// step runs, readable errors. No framework and no network beyond this party's own process.
// Every string from the server or the console goes into the page as text (el, textContent), never
// as HTML: a feature name is the server's to choose, and this page holds the party's values.
"use strict";
let state = null;
const $ = (id) => document.getElementById(id);
const token = launchToken();

function launchToken() {
  // the console printed its URL with this launch's secret in the fragment (sent to no server);
  // keep it for this tab only and take it out of the address bar and the history
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {
    sessionStorage.setItem("console-token", fromUrl);
    history.replaceState(null, "", location.pathname);
  }
  return fromUrl || sessionStorage.getItem("console-token") || "";
}

function api(path, options = {}) {
  return fetch(path, { ...options, headers: { ...options.headers, "X-Console-Token": token } });
}

function el(tag, attributes = {}, ...children) {
  // children are nodes or strings; strings become text nodes, never markup
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

async function call(step, body) {
  $("error").hidden = true;
  document.querySelectorAll("button").forEach((b) => (b.disabled = true));
  const started = Date.now();
  const timer = setInterval(async () => {  // a step over a second shows its progress
    if (Date.now() - started < 1000) return;
    try {
      const p = await (await api("/api/progress")).json();
      if (p.step) {
        $("progress").hidden = false;
        $("progress").textContent = `${p.step} … ${p.seconds} s` + (p.log.length ? ` — ${p.log[p.log.length - 1]}` : "");
      }
    } catch (e) { /* the step's own answer reports failures */ }
  }, 400);
  try {
    const response = await api(`/api/${step}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.description || answer.title || response.statusText);
    return answer;
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
    if (/model on the server changed/.test(error.message)) await load(true);
    return null;
  } finally {
    clearInterval(timer);
    $("progress").hidden = true;
    document.querySelectorAll("button").forEach((b) => (b.disabled = false));
  }
}

function values() {
  const out = {};
  for (const column of state.columns) out[column.name] = Number($(`col-${column.column}`).value);
  return out;
}

async function load(refresh) {
  const response = await api("/api/state" + (refresh ? "?refresh=1" : ""));
  const answer = await response.json();
  if (!response.ok) { $("model").textContent = answer.description; return; }
  state = answer;
  $("party").textContent = state.party;
  $("model").textContent = `model ${state.model_version} · ${state.engine} engine · ${state.scheme} · parties ${state.parties.join(", ")} · server ${state.server}`;
  $("values").replaceChildren(...state.columns.map((c) => el("label", {}, c.name,
    el("input", { id: `col-${c.column}`, type: "number", step: c.integer ? 1 : "any", min: c.min, max: c.max, value: c.value }))));
  const joinable = !state.applicant && state.scheme === "paillier";
  $("join-row").hidden = !joinable;
  $("keys-button").textContent = state.applicant ? "Make keys and upload" : (joinable ? "Join the applicant's key" : "Use the shared keys");
  $("keys-help").textContent = state.applicant
    ? (state.scheme === "paillier" ? "A Paillier key pair here; only the public key goes to the server." : "A secret key here (shared with the co-parties' keys directory); the evaluation key goes to the server.")
    : (joinable ? "Encrypt under the applicant's public key: you hold no secret." : "The secret key the applicant made, from the shared keys directory.");
  if (state.key_id) $("keys-result").textContent = `key id ${state.key_id}`;
  showFingerprint(state.fingerprint, state.applicant);
  $("uses-row").hidden = state.applicant;
  $("explain-step").hidden = !state.applicant;
  $("explain-feature").replaceChildren(...state.columns.map((c) => el("option", {}, c.name)));
  $("send-title").textContent = state.applicant ? "3. Decide" : "3. Stage";
  $("send-button").textContent = state.applicant ? "Decide" : "Stage for the applicant";
  $("send-help").textContent = state.applicant
    ? "Sends your ciphertext; the co-parties' staged ones join it; only you decrypt the decision."
    : "Leaves your ciphertext on the server for the applicant's next decision.";
}

function showFingerprint(fingerprint, applicant) {
  // Paillier: the applicant reads it out to its co-parties with the key id (not via the server)
  $("fingerprint-row").hidden = !fingerprint;
  $("fingerprint").textContent = fingerprint || "";
  $("fingerprint-help").textContent = applicant
    ? "Give the key id and this fingerprint to the co-parties yourself (phone, letter), not through the server."
    : "The applicant's key, checked against the fingerprint you were given.";
}

$("keys-button").onclick = async () => {
  const answer = await call("keys", { key_id: $("join-key").value, fingerprint: $("join-fingerprint").value });
  if (!answer) return;
  showFingerprint(answer.fingerprint, state.applicant);
  let how = answer.joined ? ", the applicant's public key fetched" : ", the shared secret key loaded";
  if (answer.upload_bytes) how = `, uploaded ${(answer.upload_bytes / 1e6).toFixed(answer.upload_bytes > 1e5 ? 1 : 4)} MB`;
  $("keys-result").textContent = `key id ${answer.key_id}${how} (${answer.seconds} s)`;
};
$("encrypt-button").onclick = async () => {
  const answer = await call("encrypt", { values: values() });
  if (!answer) return;
  $("encrypt-result").replaceChildren(`${answer.bytes.toLocaleString()} bytes of ciphertext (${answer.seconds} s)`,
    el("br"), el("span", { class: "hex" }, answer.excerpt));
};
$("send-button").onclick = async () => {
  if (!state.applicant) {
    const answer = await call("stage", { uses: Number($("uses").value) });
    if (answer) $("send-result").textContent = `staged for key ${answer.key_id}, for ${answer.uses} decision(s) (${answer.seconds} s)`;
    return;
  }
  const answer = await call("decide", { values: values() });
  if (!answer) return;
  $("send-result").replaceChildren(...decisionShown(answer));
  const own = (answer.reasons || []).find((r) => r.party === state.party);
  if (own) $("explain-feature").value = own.feature;  // the top reason among your own features
};

function decisionShown(answer) {
  // the decision, its probability and time, and the reasons table: nodes, every value as text
  const kind = answer.approved ? "approved" : "denied";
  const shown = [el("p", { class: `decision ${kind}`, id: "decision", "data-label": answer.decision },
    `${kind.toUpperCase()} (class ${answer.decision})`)];
  if (answer.probability !== null && answer.probability !== undefined) shown.push(el("p", {}, `probability of this decision ${(answer.probability * 100).toFixed(1)} %`));
  shown.push(el("p", { class: "muted" }, `encrypt + decide + decrypt: ${answer.seconds} s`));
  if (answer.reasons && answer.reasons.length) {
    shown.push(el("p", {}, "Reasons (points below each feature's best bin, largest first):"));
    const header = el("tr", {}, ...["feature", "party", "points lost", "what would change it"].map((h) => el("th", {}, h)));
    shown.push(el("table", {}, header, ...answer.reasons.map((r) => reasonRow(r, answer.approved))));
  } else if (answer.reasons === null) {
    shown.push(el("p", { class: "muted" }, "This model gives no reason codes."));
  }
  return shown;
}

function reasonRow(reason, approved) {
  const change = approved ? "" : (reason.approves_alone ? "its best bin alone approves" : "not alone");
  return el("tr", {}, ...[reason.feature, reason.party, reason.points_lost, change].map((cell) => el("td", {}, String(cell))));
}

$("values").addEventListener("submit", (event) => event.preventDefault());  // Enter in a field
$("explain-button").onclick = async () => {
  const answer = await call("explain", { values: values(), feature: $("explain-feature").value });
  if (!answer) return;
  let text;
  const how = answer.levels_decided
    ? `${answer.levels_decided} levels decided in one batched encrypted call`
    : `${answer.encrypted_predictions} encrypted decisions`;
  if (answer.already_approved) text = "Already approved: nothing to change.";
  else if (answer.value === null) text = `No value of ${answer.feature} alone gets an approval (${how}).`;
  else text = `${answer.feature} = ${answer.value} (a change of ${answer.change > 0 ? "+" : ""}${answer.change}) gets an approval, with probability ${answer.probability_after === null ? "—" : (answer.probability_after * 100).toFixed(1) + " %"} (${how}).`;
  $("explain-result").textContent = `${text} (${answer.seconds} s)`;
};
load(false);
