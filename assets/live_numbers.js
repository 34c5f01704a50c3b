// The review's numbers without Gradio's front end (ui/web/live_numbers.py says why). On an edit of a
// setting (a box typed in or ticked, a dropdown's choice), post the key of the plan the tiles show and
// the settings the page shows, and paint the answer: the verdict, the tiles and the refusal lines, the
// same HTML Gradio's own event brings a moment later with the charts. Listening in the capture phase
// sends the request before Gradio handles the event, and Gradio's event for the same edit waits
// (`afterPaint`, its js= in ui/web/wizard.py) until these numbers are painted, so its answer and the
// chart redraw it starts cannot take the frame that shows them.
(() => {
  const ENDPOINT = "lorapilot/review-numbers"; // relative: the same origin and mount as the page
  const PANES = { verdict: "#verdict", summary: "#summary-tiles", main_error: "#main-error", advanced_error: "#advanced-error" };
  const SETTING = '#review-row [id^="f-"]';
  let latest = 0; // only the last edit's answer paints
  let lastKey = null; // the last valid plan's key, for when the tiles show a refusal
  let painted = Promise.resolve(); // settles one frame after the last edit's numbers are painted (or not coming)
  const WAIT_AT_MOST_MS = 500; // Gradio's own event never waits longer on this script

  // One task first: a dropdown's refresh starts in a microtask after Gradio has already sent its event on.
  const nextTask = () => new Promise((done) => setTimeout(done, 0));
  window.lorapilot = {
    afterPaint: () =>
      nextTask().then(() => Promise.race([painted, new Promise((done) => setTimeout(done, WAIT_AT_MOST_MS))])),
  };

  const planKey = () => document.querySelector("#summary-tiles [data-lp-plan]")?.dataset.lpPlan || lastKey;

  // Number boxes as typed, checkboxes, and dropdowns once chosen (one being typed into is not a value yet).
  function settings() {
    const values = {};
    for (const block of document.querySelectorAll(SETTING)) {
      const box = block.querySelector("input, textarea");
      if (!box || (box.getAttribute("role") === "combobox" && box === document.activeElement)) continue;
      values[block.id.slice(2)] = box.type === "checkbox" ? box.checked : box.value;
    }
    return values;
  }

  function paint(pane, html) {
    const host = document.querySelector(pane + " .prose");
    if (host && typeof html === "string" && host.innerHTML !== html) host.innerHTML = html;
  }

  async function ask(key) {
    const mine = ++latest;
    try {
      const reply = await fetch(ENDPOINT, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ key, values: settings() }),
      });
      if (!reply.ok) return; // e.g. a forgotten key: Gradio's answer paints
      const answer = await reply.json();
      if (mine !== latest) return; // a later edit's answer is on its way
      for (const [name, pane] of Object.entries(PANES)) paint(pane, answer[name]);
      lastKey = planKey();
    } catch {
      // the network or the server: Gradio's answer paints
    }
  }

  function refresh() {
    const key = planKey();
    if (!key) return;
    lastKey = key;
    painted = ask(key).then(() => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0))));
  }

  document.addEventListener(
    "input",
    (event) => {
      const box = event.target;
      if (box.closest?.(SETTING) && box.getAttribute("role") !== "combobox") refresh();
    },
    true,
  );
  // A dropdown's choice fires no input event: Gradio blurs the box and sets the chosen text in a microtask
  // queued just before, so on leaving the box the next microtask reads the choice.
  document.addEventListener(
    "focusout",
    (event) => {
      const box = event.target;
      if (box.closest?.(SETTING) && box.getAttribute("role") === "combobox") queueMicrotask(refresh);
    },
    true,
  );
})();
