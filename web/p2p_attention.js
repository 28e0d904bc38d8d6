// Attention heatmaps inside the "P2P Attention Maps" node: the picture with the chosen words' cross-attention
// overlaid, word chips, an opacity slider and a source/edit switch. "P2P Attention Segments" uses the same view
// with a chip per segment, whose map is the segment's mask. A DOM widget, so it works in the classic
// canvas and in the Nodes 2.0 (Vue) renderer; it is not saved in the workflow and touches no other node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = new Set(["P2PAttentionMaps", "P2PAttentionSegments"]);
const STOPWORDS = new Set(["a", "an", "the", "and", "on", "in", "at", "of", "with", "to"]);
// v in 0..1 -> [r, g, b] in 0..255 on the colour map the node sends with its maps (anchors [value, r, g, b],
// the node's own image output uses the same ones), interpolated linearly between anchors.
function colour(v, anchors) {
  v = Math.min(1, Math.max(0, v));
  for (let i = 1; i < anchors.length; i++) {
    const [x1, ...c1] = anchors[i];
    const [x0, ...c0] = anchors[i - 1];
    if (v <= x1) {
      const t = (v - x0) / (x1 - x0);
      return c0.map((c, k) => Math.round(c + t * (c1[k] - c)));
    }
  }
  return anchors[anchors.length - 1].slice(1);
}

function element(tag, style = {}, props = {}) {
  const el = document.createElement(tag);
  Object.assign(el.style, style);
  Object.assign(el, props);
  return el;
}

class HeatmapView {
  constructor(node) {
    this.node = node;
    this.data = null;
    this.item = 0;
    this.selected = new Map(); // item index -> Set of selected words
    this.opacity = 0.7;
    this.images = new Map(); // item index -> HTMLImageElement
    this.draws = 0;

    this.root = element("div", { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
      font: "12px sans-serif", color: "var(--input-text, #ddd)" }, { className: "p2p-attention" });
    this.items = element("div", { display: "flex", gap: "4px", flexWrap: "wrap" }, { className: "p2p-items" });
    this.chips = element("div", { display: "flex", gap: "4px", flexWrap: "wrap" }, { className: "p2p-words" });
    const opacityRow = element("label", { display: "flex", gap: "6px", alignItems: "center" });
    this.slider = element("input", { flex: "1" },
      { type: "range", min: "0", max: "1", step: "0.05", value: String(this.opacity), className: "p2p-opacity" });
    this.slider.addEventListener("input", () => { this.opacity = Number(this.slider.value); this.draw(); });
    opacityRow.append("opacity", this.slider);
    this.canvas = element("canvas", { width: "100%", imageRendering: "pixelated", background: "#111",
      borderRadius: "4px" }, { width: 256, height: 256, className: "p2p-canvas" });
    this.caption = element("div", { opacity: "0.75", whiteSpace: "nowrap", overflow: "hidden",
      textOverflow: "ellipsis" }, { className: "p2p-caption", textContent: "Queue the workflow to see attention maps." });
    this.root.append(this.items, this.chips, opacityRow, this.canvas, this.caption);
    // Keep the graph from treating clicks and drags on the controls as canvas gestures.
    for (const type of ["pointerdown", "mousedown", "wheel"]) {
      this.root.addEventListener(type, (e) => e.stopPropagation());
    }
  }

  show(data) {
    this.data = data;
    this.item = Math.min(data.item ?? 0, data.items.length - 1);
    this.selected.clear();
    this.images.clear();
    data.items.forEach((entry, i) => {
      const img = new Image();
      img.onload = () => { if (i === this.item) this.draw(); };
      img.src = api.apiURL("/view?" + new URLSearchParams(entry.image) + app.getRandParam());
      this.images.set(i, img);
    });
    this.render();
  }

  wordsOf(i) {
    if (!this.selected.has(i)) {
      const words = this.data.items[i].words;
      const first = words.find((w) => !STOPWORDS.has(w)) ?? words[0];
      this.selected.set(i, new Set(first ? [first] : []));
    }
    return this.selected.get(i);
  }

  render() {
    const data = this.data;
    this.items.replaceChildren(...data.items.map((entry, i) => {
      const b = element("button", this.buttonStyle(i === this.item), { textContent: entry.label });
      b.dataset.item = String(i);
      b.addEventListener("click", () => { this.item = i; this.render(); });
      return b;
    }));
    const chosen = this.wordsOf(this.item);
    this.chips.replaceChildren(...data.items[this.item].words.map((word) => {
      const chip = element("button", this.buttonStyle(chosen.has(word), true), { textContent: word });
      chip.dataset.word = word;
      chip.addEventListener("click", (e) => {
        if (!e.shiftKey && !e.ctrlKey && !e.metaKey) {
          // a plain click picks one word; shift/ctrl-click adds or removes words
          const only = chosen.size === 1 && chosen.has(word);
          chosen.clear();
          if (!only) chosen.add(word);
        } else if (chosen.has(word)) {
          chosen.delete(word);
        } else {
          chosen.add(word);
        }
        this.render();
      });
      return chip;
    }));
    this.draw();
  }

  buttonStyle(active, chip = false) {
    return {
      padding: chip ? "1px 8px" : "1px 6px", borderRadius: chip ? "10px" : "4px", cursor: "pointer",
      border: "1px solid " + (active ? "#e8a33d" : "#555"),
      background: active ? "#e8a33d" : "var(--comfy-input-bg, #222)",
      color: active ? "#111" : "var(--input-text, #ddd)", font: "inherit",
    };
  }

  heat() {
    // the chosen words' maps summed, scaled to their maximum: [h, w] or null
    const entry = this.data.items[this.item];
    const chosen = this.wordsOf(this.item);
    let sum = null, h = 0, w = 0;
    entry.words.forEach((word, k) => {
      if (!chosen.has(word)) return;
      const map = entry.maps[k];
      h = map.h; w = map.w;
      sum = sum ? sum.map((v, j) => v + map.values[j]) : map.values.slice();
    });
    if (!sum) return null;
    const top = Math.max(...sum) || 1;
    return { h, w, values: sum.map((v) => v / top) };
  }

  draw() {
    const data = this.data;
    const img = data && this.images.get(this.item);
    const ctx = this.canvas.getContext("2d");
    if (!img || !img.complete || !img.naturalWidth) return;
    const size = 512;
    this.canvas.width = size;
    this.canvas.height = Math.round(size * img.naturalHeight / img.naturalWidth);
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(img, 0, 0, this.canvas.width, this.canvas.height);
    const heat = this.heat();
    if (heat) {
      const small = element("canvas", {}, { width: heat.w, height: heat.h });
      const sctx = small.getContext("2d");
      const pixels = sctx.createImageData(heat.w, heat.h);
      heat.values.forEach((v, j) => {
        // weakly attended pixels stay transparent, so the picture shows through where the word is not
        const alpha = Math.round(255 * this.opacity * Math.min(1, 1.5 * v));
        pixels.data.set([...colour(v, data.colour_map), alpha], j * 4);
      });
      sctx.putImageData(pixels, 0, 0);
      ctx.imageSmoothingEnabled = true; // bilinear, as the paper's upsampled maps
      ctx.drawImage(small, 0, 0, this.canvas.width, this.canvas.height);
    }
    const entry = data.items[this.item];
    const words = [...this.wordsOf(this.item)].join(" + ") || "no word";
    this.caption.textContent = `${entry.label}: ${words} · ${data.map_size.join("x")} maps, steps ` +
      `${data.steps[0]}-${data.steps[1]}, ${data.layers} layers`;
    this.caption.title = entry.prompt;
    this.draws += 1;
    this.canvas.dataset.draws = String(this.draws);
    this.canvas.dataset.item = String(this.item);
    this.canvas.dataset.words = [...this.wordsOf(this.item)].join(",");
  }
}

app.registerExtension({
  name: "prompt_to_prompt.attention_maps",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const view = new HeatmapView(this);
      const widget = this.addDOMWidget("p2p_attention_view", "p2p_attention", view.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 360,
      });
      widget.serialize = false; // keeps it out of the saved workflow's widgets_values too
      this.p2pAttentionView = view;
      this.setSize([Math.max(this.size[0], 380), Math.max(this.size[1], 560)]);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const data = output?.p2p_attention?.[0];
      if (data && this.p2pAttentionView) this.p2pAttentionView.show(data);
    };
  },
});
