// The party console's page: the form from /api/state, one button per step, progress while a
// step runs, readable errors. No framework and no network beyond this party's own process.
"use strict";
let state = null;
const $ = (id) => document.getElementById(id);

async function call(step, body) {
  $("error").hidden = true;
  document.querySelectorAll("button").forEach((b) => (b.disabled = true));
  const started = Date.now();
  const timer = setInterval(async () => {  // a step over a second shows its progress
    if (Date.now() - started < 1000) return;
    try {
      const p = await (await fetch("/api/progress")).json();
      if (p.step) {
        $("progress").hidden = false;
        $("progress").textContent = `${p.step} … ${p.seconds} s` + (p.log.length ? ` — ${p.log[p.log.length - 1]}` : "");
      }
    } catch (e) { /* the step's own answer reports failures */ }
  }, 400);
  try {
    const response = await fetch(`/api/${step}`, {
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
  const response = await fetch("/api/state" + (refresh ? "?refresh=1" : ""));
  const answer = await response.json();
  if (!response.ok) { $("model").textContent = answer.description; return; }
  state = answer;
  $("party").textContent = state.party;
  $("model").textContent = `model ${state.model_version} · ${state.engine} engine · ${state.scheme} · parties ${state.parties.join(", ")} · server ${state.server}`;
  const form = $("values");
  form.innerHTML = "";
  for (const c of state.columns) {
    const step = c.integer ? 1 : "any";
    form.insertAdjacentHTML("beforeend",
      `<label>${c.name}<input id="col-${c.column}" type="number" step="${step}" min="${c.min}" max="${c.max}" value="${c.value}"></label>`);
  }
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
  $("explain-feature").innerHTML = state.columns.map((c) => `<option>${c.name}</option>`).join("");
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
  $("encrypt-result").innerHTML = `${answer.bytes.toLocaleString()} bytes of ciphertext (${answer.seconds} s)<br><span class="hex">${answer.excerpt}</span>`;
};
$("send-button").onclick = async () => {
  if (!state.applicant) {
    const answer = await call("stage", { uses: Number($("uses").value) });
    if (answer) $("send-result").textContent = `staged for key ${answer.key_id}, for ${answer.uses} decision(s) (${answer.seconds} s)`;
    return;
  }
  const answer = await call("decide", { values: values() });
  if (!answer) return;
  const kind = answer.approved ? "approved" : "denied";
  let html = `<p class="decision ${kind}" id="decision" data-label="${answer.decision}">${kind.toUpperCase()} (class ${answer.decision})</p>`;
  if (answer.probability !== null && answer.probability !== undefined) html += `<p>probability of this decision ${(answer.probability * 100).toFixed(1)} %</p>`;
  html += `<p class="muted">encrypt + decide + decrypt: ${answer.seconds} s</p>`;
  if (answer.reasons && answer.reasons.length) {
    html += "<p>Reasons (points below each feature's best bin, largest first):</p><table><tr><th>feature</th><th>party</th><th>points lost</th><th>what would change it</th></tr>";
    for (const r of answer.reasons) {
      const change = answer.approved ? "" : (r.approves_alone ? "its best bin alone approves" : "not alone");
      html += `<tr><td>${r.feature}</td><td>${r.party}</td><td>${r.points_lost}</td><td>${change}</td></tr>`;
    }
    html += "</table>";
  } else if (answer.reasons === null) {
    html += `<p class="muted">This model gives no reason codes.</p>`;
  }
  $("send-result").innerHTML = html;
  const own = (answer.reasons || []).find((r) => r.party === state.party);
  if (own) $("explain-feature").value = own.feature;  // the top reason among your own features
};
$("explain-button").onclick = async () => {
  const answer = await call("explain", { values: values(), feature: $("explain-feature").value });
  if (!answer) return;
  let text;
  if (answer.already_approved) text = "Already approved: nothing to change.";
  else if (answer.value === null) text = `No value of ${answer.feature} alone gets an approval (${answer.encrypted_predictions} encrypted decisions).`;
  else text = `${answer.feature} = ${answer.value} (a change of ${answer.change > 0 ? "+" : ""}${answer.change}) gets an approval, with probability ${answer.probability_after === null ? "—" : (answer.probability_after * 100).toFixed(1) + " %"} (${answer.encrypted_predictions} encrypted decisions).`;
  $("explain-result").textContent = `${text} (${answer.seconds} s)`;
};
load(false);
