// The page `ldm serve` answers at `/`: plain JS, no libraries, nothing loaded from elsewhere.
//
// GET /health describes the model (conditioning, classes, image size, samplers) and the server's limits;
// the forms are shaped from it. Requests go through client.js (token, request ids, progress), loaded
// first. Each result comes with the `ldm` command that reproduces it (flags of ldm_system/serving/cli.py).
"use strict";

const state = {
  health: null,
  images: { input: null, a: null, b: null }, // slot → {name, url}: the files the requests send
  pickers: { input: [], a: [], b: [] },
  views: {},
};

// ---- one output area per tab ---------------------------------------------------------------
function makeView(root) {
  root.append($("#output-template").content.cloneNode(true));
  const el = {
    empty: $(".empty", root), progress: $(".progress", root), text: $(".progress-text", root),
    bar: $(".bar", root), fill: $(".bar span", root), error: $(".error", root), results: $(".results", root),
    cli: $(".cli", root), code: $(".cli code", root), note: $(".cli-note", root),
  };
  let controller = null;
  let started = 0;
  let last = null;
  $(".cancel", root).addEventListener("click", () => controller && controller.abort());
  $(".copy", root).addEventListener("click", (ev) => copyText(el.code.textContent, ev.target));
  return {
    busy: () => controller !== null,
    start(ctrl) {
      controller = ctrl; started = performance.now(); last = null;
      el.error.hidden = true;
      el.empty.hidden = true;
      el.progress.hidden = false;
      el.bar.classList.add("indeterminate");
      el.fill.style.width = "0%";
      el.text.textContent = "sending…";
      root.classList.add("running");
    },
    progress(p) { last = p; this.tick(); },
    tick() {
      const secs = ((performance.now() - started) / 1000).toFixed(0);
      if (!last || last.state === "unknown") { el.text.textContent = `working… ${secs} s`; return; }
      const { state: s, step, total } = last;
      const known = total > 0 && (s === "running" || s === "done");
      el.bar.classList.toggle("indeterminate", !known);
      if (known) el.fill.style.width = `${Math.min(100, (100 * step) / total).toFixed(1)}%`;
      el.text.textContent = s === "queued" ? `queued: waiting for the model… ${secs} s`
        : known ? `step ${step} / ${total} · ${secs} s` : `${s}… ${secs} s`;
    },
    finish() { controller = null; el.progress.hidden = true; root.classList.remove("running"); },
    error(message, cancelled = false) {
      el.empty.hidden = true;
      el.error.textContent = message;
      el.error.hidden = false;
      el.error.classList.toggle("notice", cancelled); // the user's own doing: no alarm, the results stay current
      el.results.classList.toggle("stale", !cancelled);
      el.cli.classList.toggle("stale", !cancelled);
    },
    show(result, args, note) {
      el.empty.hidden = true;
      el.results.classList.remove("stale");
      el.cli.classList.remove("stale");
      el.results.replaceChildren(result);
      // one nowrap span per argument: lines break between arguments, never inside `--steps`
      el.code.replaceChildren(...args.flatMap((arg, i) => [i ? " " : "", node("span", "arg", arg)]));
      el.note.textContent = note;
      el.note.hidden = !note;
      el.cli.hidden = false;
    },
  };
}

async function run(tab, path, body, render, command) {
  const view = state.views[tab];
  if (view.busy()) return;
  const ctrl = new AbortController();
  const requestId = newRequestId();
  const button = $(`#form-${tab} button[type=submit]`);
  button.disabled = true;
  view.start(ctrl);
  const stop = watchProgress(requestId, view);
  try {
    const data = await api(path, body, { requestId, signal: ctrl.signal });
    view.show(render(data), command.args, command.note);
  } catch (e) {
    view.error(e.name === "AbortError" ? "Cancelled." : e.message, e.name === "AbortError");
  } finally {
    stop();
    view.finish();
    button.disabled = false;
  }
}

function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => {});
    return;
  }
  const area = document.createElement("textarea"); // http:// on another host: no clipboard API
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}

// ---- images --------------------------------------------------------------------------------
const png = (b64) => `data:image/png;base64,${b64}`;
const base64Of = (dataUrl) => dataUrl.slice(dataUrl.indexOf(",") + 1);

function img(url, alt) {
  const im = document.createElement("img");
  im.alt = alt;
  im.addEventListener("load", () => im.classList.toggle("pixelated", im.naturalWidth < 128));
  im.src = url;
  return im;
}

function tile(url, caption, alt) {
  const fig = document.createElement("figure");
  fig.className = "tile";
  fig.append(img(url, alt || caption));
  if (caption) {
    const c = document.createElement("figcaption");
    c.textContent = caption;
    fig.append(c);
  }
  return fig;
}

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

function setImage(slot, image) {
  state.images[slot] = image;
  for (const p of state.pickers[slot]) {
    const thumb = $(".thumb", p);
    thumb.replaceChildren(img(image.url, image.name));
    thumb.classList.remove("empty-thumb");
    $(".picker-name", p).textContent = image.name;
  }
}

function makePicker(root) {
  const slot = root.dataset.slot;
  root.append($("#picker-template").content.cloneNode(true));
  $(".picker-label", root).textContent = { input: "Image", a: "Image A", b: "Image B" }[slot];
  const input = $("input[type=file]", root);
  input.name = `file_${slot}`;
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      const probe = new Image(); // its pixel size decides the CLI's --height/--width (see sizeFlags)
      probe.addEventListener("load", () => setImage(slot, { name: file.name, url: reader.result,
        width: probe.naturalWidth, height: probe.naturalHeight }));
      probe.addEventListener("error", () => setImage(slot, { name: file.name, url: reader.result }));
      probe.src = reader.result;
    });
    reader.readAsDataURL(file);
  });
  state.pickers[slot].push(root);
}

function needImage(slot) {
  const image = state.images[slot];
  if (!image) throw new Error(`Choose ${slot === "input" ? "an image" : `image ${slot.toUpperCase()}`} first.`);
  return image;
}

// ---- the model's conditioning ----------------------------------------------------------------
const model = () => state.health.model;
const kind = () => model().conditioning; // "none" | "class" | "text"
const className = (i) => model().classes[i];

function fillClassSelects() {
  for (const sel of $$(".class-select")) {
    sel.replaceChildren();
    if (sel.dataset.none) sel.append(new Option(sel.dataset.none, ""));
    if (sel.dataset.all) sel.append(new Option("all classes (cycle)", "all"));
    model().classes.forEach((c, i) => sel.append(new Option(String(c), String(i))));
    if (sel.dataset.all) sel.value = "all";
  }
  const edit = $("#form-edit");
  if (model().classes.length > 1) edit.target_class.value = "1";
}

// The chosen class: null (none), "all", or the class as /health lists it (name or id).
function chosenClass(sel) {
  if (sel.value === "" || sel.value === "all") return sel.value === "all" ? "all" : null;
  return className(Number(sel.value));
}

function text(input) {
  const v = input.value.trim();
  return v === "" ? null : v;
}

function number(form, name, label) {
  const v = form.elements[name].value.trim();
  const x = Number(v);
  if (v === "" || !Number.isFinite(x)) throw new Error(`${label}: enter a number.`);
  return x;
}

// ---- the CLI command that reproduces a result ------------------------------------------------
function quote(arg) {
  const s = String(arg);
  return /^[A-Za-z0-9_\/.,:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function command(verb, args) {
  // /health does not say where the model lies on the server's disk: MODEL stands for that folder
  const parts = ["ldm", verb, "--model", "MODEL"];
  for (const a of args) {
    if (a === null || a === undefined || a === false) continue;
    parts.push(...(Array.isArray(a) ? a.filter((x) => x !== null && x !== undefined).map(quote) : [quote(a)]));
  }
  const notes = ["MODEL: the model folder `ldm serve` was started with."];
  if (["invert", "edit", "interpolate"].includes(verb)) notes.push("Input files: save them where you run the command.");
  return { args: parts, note: notes.join(" ") };
}

const flag = (name, value) => (value === null || value === undefined ? null : [name, value]);

// The server makes every upload the model's square (resize: shorter side, centre crop); the CLI keeps a
// non-square image's aspect unless told the size, so it is told.
function sizeFlags(...images) {
  const size = model().image_size;
  const square = images.every((im) => im.width === im.height && im.width !== undefined);
  return square ? null : ["--height", size, "--width", size];
}

// ---- the five forms ----------------------------------------------------------------------------
function submitSample(form) {
  const num = number(form, "num", "Images");
  const steps = number(form, "steps", "Steps");
  const seed = number(form, "seed", "Seed");
  const sampler = form.sampler.value;
  const body = { num, sampler, steps, seed };
  let cls = null;
  let prompt = null;
  if (kind() === "class") {
    cls = chosenClass(form.elements.class);
    if (cls === "all") body.classes = Array.from({ length: num }, (_, i) => className(i % model().classes.length));
    else if (cls !== null) body.classes = cls;
  } else if (kind() === "text") {
    prompt = text(form.prompt);
    if (prompt !== null) body.prompts = prompt;
  }
  const conditioned = body.classes !== undefined || body.prompts !== undefined;
  if (conditioned) body.guidance = number(form, "guidance", "Guidance");
  for (const side of ["height", "width"]) {
    if (form.elements[side].value.trim() !== "") body[side] = number(form, side, side[0].toUpperCase() + side.slice(1));
  }
  const cmd = command("sample", [["--num", num], flag("--class", cls), flag("--prompt", prompt),
    ["--sampler", sampler], ["--steps", steps], conditioned ? ["--guidance", body.guidance] : null, ["--seed", seed],
    flag("--height", body.height), flag("--width", body.width), ["--out", "samples.png"]]);
  run("sample", "/sample", body, (data) => renderSamples(data, seed), cmd);
}

function renderSamples(data, seed) {
  const wrap = node("div");
  const grid = node("div", "grid");
  const bar = node("div", "selection");
  const label = node("span", "muted", "Click an image to save it or use it as an input.");
  bar.append(label);
  const actions = node("span", "actions");
  actions.hidden = true;
  const save = node("a", "button ghost", "Save PNG");
  const use = { input: "Use for invert / edit", a: "Use as A", b: "Use as B" };
  const buttons = Object.entries(use).map(([slot, caption]) => {
    const b = node("button", "ghost", caption);
    b.type = "button";
    b.dataset.use = slot;
    return b;
  });
  actions.append(save, ...buttons);
  bar.append(actions);
  let chosen = null;
  data.images.forEach((b64, i) => {
    const t = tile(png(b64), null, `sample ${i}`);
    t.tabIndex = 0;
    t.addEventListener("click", () => {
      $$(".tile", grid).forEach((x) => x.classList.toggle("selected", x === t));
      chosen = { name: `sample_seed${seed}_${i}.png`, url: png(b64), width: t.firstChild.naturalWidth,
        height: t.firstChild.naturalHeight };
      label.textContent = `${chosen.name}:`;
      save.href = chosen.url;
      save.download = chosen.name;
      actions.hidden = false;
    });
    grid.append(t);
  });
  for (const b of buttons) {
    b.addEventListener("click", () => {
      setImage(b.dataset.use, chosen);
      b.textContent = "✓ " + use[b.dataset.use];
      setTimeout(() => { b.textContent = use[b.dataset.use]; }, 1500);
    });
  }
  wrap.append(grid, bar, node("p", "meta muted", `${data.images.length} images · ${fmtSeconds(data.seconds)}`));
  return wrap;
}

const fmtSeconds = (s) => (typeof s === "number" ? `${s.toFixed(1)} s` : "");

function imagesBody(slot) {
  const image = needImage(slot);
  return { image, b64: base64Of(image.url) };
}

function submitInvert(form) {
  const { image, b64 } = imagesBody("input");
  const steps = number(form, "steps", "Steps");
  const fixedPoint = number(form, "fixed_point", "Fixed-point");
  const body = { images: [b64], resize: true, steps, fixed_point_iters: fixedPoint };
  let cls = null;
  let prompt = null;
  if (kind() === "class") cls = chosenClass(form.elements.class);
  if (kind() === "text") prompt = text(form.prompt);
  if (cls !== null) body.classes = cls;
  if (prompt !== null) body.prompts = prompt;
  const guidance = kind() === "none" ? 1 : number(form, "guidance", "Guidance");
  const nullOpt = kind() !== "none" && form.null_opt.checked;
  body.guidance = guidance;
  body.null_optimization = nullOpt;
  const cmd = command("invert", [image.name, sizeFlags(image), flag("--class", cls), flag("--prompt", prompt), ["--steps", steps],
    guidance !== 1 ? ["--guidance", guidance] : null, fixedPoint ? ["--fixed-point", fixedPoint] : null,
    nullOpt ? "--null-opt" : null, ["--out", "inversion"]]);
  run("invert", "/invert", body, (data) => {
    const wrap = node("div");
    const pair = node("div", "pair-view");
    pair.append(tile(image.url, "input"), node("div", "arrow", "→"), tile(png(data.reconstructions[0]), "reconstruction"));
    const stats = node("div", "stats");
    stats.append(stat("PSNR", `${data.psnr[0].toFixed(2)} dB`, "psnr"), stat("SSIM", data.ssim[0].toFixed(3)),
      stat("latent MSE", data.latent_mse[0].toExponential(2)), stat("time", fmtSeconds(data.seconds)));
    wrap.append(pair, stats);
    return wrap;
  }, cmd);
}

function stat(label, value, cls) {
  const s = node("div", `stat ${cls || ""}`.trim());
  s.append(node("span", "stat-value", value), node("span", "stat-label", label));
  return s;
}

function beforeAfter(image, b64, caption) {
  const pair = node("div", "pair-view");
  pair.append(tile(image.url, "input"), node("div", "arrow", "→"), tile(png(b64), caption));
  return pair;
}

function submitEdit(form) {
  const { image, b64 } = imagesBody("input");
  const steps = number(form, "steps", "Steps");
  const guidance = number(form, "guidance", "Guidance");
  const keep = number(form, "keep_steps", "Keep steps");
  const body = { images: [b64], resize: true, steps, guidance, keep_steps: keep };
  let args;
  let caption;
  if (kind() === "class") {
    body.source_class = chosenClass(form.source_class);
    body.target_class = chosenClass(form.target_class);
    args = [["--source-class", body.source_class], ["--target-class", body.target_class]];
    caption = `as ${body.target_class}`;
  } else {
    const source = text(form.source_prompt);
    const target = text(form.target_prompt);
    if (target === null) throw new Error("Enter the prompt to edit towards.");
    if (source !== null) body.source_prompt = source;
    body.target_prompt = target;
    args = [flag("--source-prompt", source), ["--target-prompt", target]];
    caption = `“${target}”`;
  }
  const cmd = command("edit", [image.name, sizeFlags(image), ...args, ["--keep-steps", keep], ["--steps", steps],
    guidance !== 1 ? ["--guidance", guidance] : null, ["--out", "edit"]]);
  run("edit", "/edit", body, (data) => {
    const wrap = node("div");
    wrap.append(beforeAfter(image, data.images[0], caption),
      node("p", "meta muted", `keep ${keep} of ${steps} steps · ${fmtSeconds(data.seconds)}`));
    return wrap;
  }, cmd);
}

function submitSDEdit(form) {
  const { image, b64 } = imagesBody("input");
  const steps = number(form, "steps", "Steps");
  const seed = number(form, "seed", "Seed");
  const guidance = number(form, "guidance", "Guidance");
  const strength = number(form, "strength", "Strength");
  const body = { images: [b64], resize: true, steps, guidance, strength, seed };
  let target;
  if (kind() === "class") {
    body.target_class = chosenClass(form.target_class);
    target = ["--target-class", body.target_class];
  } else {
    body.target_prompt = text(form.target_prompt);
    if (body.target_prompt === null) throw new Error("Enter the prompt to edit towards.");
    target = ["--target-prompt", body.target_prompt];
  }
  const cmd = command("edit", [image.name, sizeFlags(image), target, ["--strength", strength], ["--steps", steps],
    guidance !== 1 ? ["--guidance", guidance] : null, ["--seed", seed], ["--out", "sdedit"]]);
  run("sdedit", "/edit", body, (data) => {
    const wrap = node("div");
    wrap.append(beforeAfter(image, data.images[0], `strength ${strength}`),
      node("p", "meta muted", `towards ${target[1]} · ${fmtSeconds(data.seconds)}`));
    return wrap;
  }, cmd);
}

function submitInterpolate(form) {
  const a = imagesBody("a");
  const b = imagesBody("b");
  const num = number(form, "num", "Frames");
  const steps = number(form, "steps", "Steps");
  const body = { images: [a.b64, b.b64], resize: true, num, steps };
  let classes = null;
  let prompt = null;
  if (kind() === "class") {
    const ca = chosenClass(form.class_a);
    const cb = chosenClass(form.class_b);
    if ((ca === null) !== (cb === null)) throw new Error("Choose a class for both ends, or none for either.");
    if (ca !== null) classes = body.classes = [ca, cb];
  } else if (kind() === "text") {
    prompt = text(form.prompt);
    if (prompt !== null) body.prompts = prompt;
  }
  const cmd = command("interpolate", [a.image.name, b.image.name, sizeFlags(a.image, b.image), ["--num", num], ["--steps", steps],
    flag("--class", classes), flag("--prompt", prompt), ["--out", "interpolation.png"]]);
  run("interpolate", "/interpolate", body, (data) => {
    const wrap = node("div");
    const strip = node("div", "strip");
    data.frames.forEach((f, i) => strip.append(tile(png(f), i === 0 ? "A" : i === data.frames.length - 1 ? "B" : String(i))));
    wrap.append(strip, node("p", "meta muted", `${data.frames.length} frames · ${fmtSeconds(data.seconds)}`));
    return wrap;
  }, cmd);
}

// ---- set-up ----------------------------------------------------------------------------------
function showTab(name) {
  if (!$(`#tab-${name}`)) name = "sample";
  for (const t of $$(".tabs [role=tab]")) t.setAttribute("aria-selected", String(t.dataset.tab === name));
  for (const p of $$("main > .panel")) p.hidden = p.id !== `tab-${name}`;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function describeModel() {
  const m = model();
  const L = state.health.limits || {};
  const cond = { class: `class-conditional · ${m.classes.length} classes`, text: "text-conditioned",
    none: "unconditional" }[m.conditioning] || m.conditioning;
  const chips = [cond, `${m.image_size}×${m.image_size} px · ${m.image_channels === 1 ? "grey" : `${m.image_channels} channels`}`,
    `${m.prediction_type}-prediction`];
  if (L.max_steps) chips.push(`≤ ${L.max_steps} steps · ≤ ${L.max_batch} images`);
  $("#model-info").replaceChildren(...chips.map((c) => node("span", "chip", c)));
}

function applyLimits() {
  const L = state.health.limits || {};
  const set = (sel, attr, v) => { if (v !== undefined) $$(sel).forEach((e) => e.setAttribute(attr, v)); };
  set("input[name=steps]", "max", L.max_steps);
  set("input[name=num]", "max", L.max_batch);
  set("input[name=guidance]", "max", L.max_guidance);
  set("input[name=fixed_point]", "max", L.max_fixed_point_iters);
  for (const n of $$("input[name=num]")) {
    if (L.max_batch && Number(n.value) > L.max_batch) n.value = L.max_batch;
  }
  const step = model().pixel_step;
  const size = model().image_size;
  for (const side of $$("input[name=height], input[name=width]")) {
    side.placeholder = String(size);
    if (step) { side.step = step; side.min = step; }
  }
  $(".size-hint").textContent = step ? `Multiples of ${step} px; empty: ${size} px (the training size).`
    : `Empty: ${size} px (the training size). Other sizes must be multiples of the model's pixel step.`;
}

function wireSliders() {
  const edit = $("#form-edit");
  let keepWanted = Number(edit.keep_steps.value); // the user's choice, kept while the steps are retyped
  const keepLabel = () => { edit.keep_out.value = `${edit.keep_steps.value} of ${edit.steps.value}`; };
  edit.steps.addEventListener("input", () => {
    const steps = Math.max(1, Number(edit.steps.value) || 1);
    edit.keep_steps.max = steps;
    edit.keep_steps.value = Math.min(keepWanted, steps);
    keepLabel();
  });
  edit.keep_steps.addEventListener("input", () => { keepWanted = Number(edit.keep_steps.value); keepLabel(); });
  keepLabel();
  const sd = $("#form-sdedit");
  const strengthLabel = () => { sd.strength_out.value = Number(sd.strength.value).toFixed(2); };
  sd.strength.addEventListener("input", strengthLabel);
  strengthLabel();
}

function wireForms() {
  const handlers = { sample: submitSample, invert: submitInvert, edit: submitEdit, sdedit: submitSDEdit,
    interpolate: submitInterpolate };
  for (const [tab, handler] of Object.entries(handlers)) {
    const form = $(`#form-${tab}`);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (!state.health) return;
      try {
        handler(form);
      } catch (e) {
        state.views[tab].error(e.message);
      }
    });
  }
}

async function main() {
  for (const out of $$("[data-output]")) state.views[out.dataset.output] = makeView(out);
  $$(".picker").forEach(makePicker);
  for (const t of $$(".tabs [role=tab]")) t.addEventListener("click", () => showTab(t.dataset.tab));
  showTab(location.hash.slice(1));
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  wireSliders();
  wireForms();
  $("#token-button").hidden = !session.token;
  $("#token-button").addEventListener("click", () => askToken("Enter the server's bearer token.").catch(() => {}));
  try {
    state.health = await api("/health");
    await checkToken();
  } catch (e) {
    $("#model-info").replaceChildren(node("span", "chip bad", `cannot reach the server: ${e.message}`));
    return;
  }
  document.body.dataset.cond = kind();
  describeModel();
  $$(".sampler-select").forEach((s) => {
    s.replaceChildren(...state.health.samplers.map((n) => new Option(n, n)));
    s.value = state.health.samplers.includes("ddim") ? "ddim" : state.health.samplers[0];
  });
  if (kind() === "class") fillClassSelects();
  applyLimits();
  document.body.classList.add("ready");
}

main();
