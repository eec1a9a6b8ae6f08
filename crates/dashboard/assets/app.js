// Herald dashboard: small improvements over pages that work without script.
"use strict";

function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

// Live campaign progress: polls the progress endpoint until the campaign is done.
function watchProgress() {
  const box = document.getElementById("progress");
  if (!box || !box.dataset.url || box.dataset.done === "true") return;
  const tick = async () => {
    let done = false;
    try {
      const r = await fetch(box.dataset.url, { headers: { Accept: "application/json" } });
      if (r.ok) {
        const p = await r.json();
        const bar = document.getElementById("progress-bar");
        bar.max = Math.max(p.total, 1);
        bar.value = p.settled;
        document.getElementById("progress-percent").textContent = p.percent + "%";
        box.dataset.percent = p.percent;
        document.getElementById("progress-text").textContent = p.text;
        if (p.status !== box.dataset.status || (p.done && box.dataset.done !== "true")) {
          // The actions a campaign allows follow its status, and the final
          // figures are the server's: show the page anew.
          window.location.reload();
          return;
        }
        for (const [name, n] of Object.entries(p.counts)) {
          const cell = document.querySelector('#outcomes tr[data-status="' + name + '"] td.num');
          if (cell) { cell.textContent = n.toLocaleString("en"); cell.dataset.count = n; }
          const rect = document.querySelector('#outcomes tr[data-status="' + name + '"] rect');
          if (rect) {
            const max = Math.max(1, ...Object.values(p.counts));
            rect.setAttribute("width", String(Math.floor(n * 100 / max)));
          }
        }
        done = p.done;
      }
    } catch (e) { /* the next tick tries again */ }
    if (!done) setTimeout(tick, 1000);
  };
  tick();
}

// Live audience size while composing a campaign.
function watchAudience() {
  const form = document.getElementById("composer");
  const out = document.getElementById("estimate");
  if (!form || !out || !form.dataset.estimateUrl) return;
  let timer = null;
  const estimate = async () => {
    const body = new URLSearchParams(new FormData(form));
    try {
      const r = await fetch(form.dataset.estimateUrl, {
        method: "POST", body,
        headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
      });
      const e = await r.json();
      out.textContent = r.ok
        ? e.installations.toLocaleString("en") + " installations (iOS " + (e.by_platform.ios || 0).toLocaleString("en")
          + ", Android " + (e.by_platform.android || 0).toLocaleString("en") + ")"
        : "Audience not valid yet: " + e.detail;
      out.dataset.installations = r.ok ? e.installations : "";
    } catch (err) { out.textContent = "Audience size unavailable"; }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(estimate, 300); };
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  estimate();
}

// iOS and Android previews of the message being written, per language.
function watchPreview() {
  const pick = document.getElementById("preview-lang");
  if (!pick) return;
  const value = (id) => { const el = document.getElementById(id); return el ? el.value : ""; };
  const update = () => {
    let title = value("title"), body = value("body");
    const lang = pick.value;
    const langs = pick.form ? pick.form.querySelectorAll('input[name="loc_lang"]') : [];
    const known = new Set([""]);
    langs.forEach((input) => {
      const l = input.value.trim();
      if (!l) return;
      known.add(l);
      if (l === lang) {
        const row = input.closest(".loc-row");
        const t = row.querySelector('[name="loc_title"]').value, b = row.querySelector('[name="loc_body"]').value;
        if (t) title = t;
        if (b) body = b;
      }
    });
    for (const l of known) {
      if (![...pick.options].some((o) => o.value === l)) pick.add(new Option(l, l));
    }
    document.querySelectorAll(".preview .p-title").forEach((el) => { el.textContent = title || "(no title)"; });
    document.querySelectorAll(".preview .p-body").forEach((el) => { el.textContent = body || "(no body)"; });
  };
  document.addEventListener("input", update);
  pick.addEventListener("change", update);
  update();
}

// "Add a language" / "Add a condition": copies the row template.
function repeaters() {
  document.querySelectorAll("button[data-repeat]").forEach((button) => {
    button.hidden = false;
    button.addEventListener("click", () => {
      const template = document.getElementById(button.dataset.repeat);
      const target = document.getElementById(button.dataset.into);
      target.appendChild(template.content.cloneNode(true));
    });
  });
}

// Shows only the schedule fields the chosen schedule needs.
function scheduleFields() {
  const radios = document.querySelectorAll('input[name="schedule"]');
  if (!radios.length) return;
  const update = () => {
    const chosen = document.querySelector('input[name="schedule"]:checked');
    document.querySelectorAll("[data-schedule]").forEach((el) => {
      el.hidden = !chosen || el.dataset.schedule !== chosen.value;
    });
  };
  radios.forEach((r) => r.addEventListener("change", update));
  update();
}

// Takes the operator to the first field the server refused.
function focusFirstError() {
  const field = document.querySelector('[aria-invalid="true"]');
  if (field) field.focus();
}

document.addEventListener("DOMContentLoaded", () => {
  focusFirstError();
  watchProgress();
  watchAudience();
  watchPreview();
  repeaters();
  scheduleFields();
});
