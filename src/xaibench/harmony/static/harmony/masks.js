// The mask task: brush, polygon and box tools over the image, undo, zoom; Save posts the region as
// a PNG of the image's size (white = inside, on black) and the boxes as JSON [[x0, y0, x1, y1], ...]
// in image pixels (0-based, end exclusive).
(function () {
  "use strict";
  const canvas = document.getElementById("overlay");
  if (!canvas) return;
  const W = canvas.width, H = canvas.height;
  const ctx = canvas.getContext("2d");
  const stage = document.getElementById("stage");
  const viewport = document.getElementById("viewport");
  const size = document.getElementById("brush-size");
  const ops = [];          // {kind: "base"|"brush"|"polygon"|"box", ...}, in drawing order; Undo pops
  let tool = "brush", stroke = null, pending = [], drag = null, zoom = 1;

  const region = document.createElement("canvas");  // the drawn region, white on transparent
  region.width = W; region.height = H;
  const tint = document.createElement("canvas");
  tint.width = W; tint.height = H;

  function paintRegion(c, colour) {
    c.save();
    c.fillStyle = c.strokeStyle = colour;
    c.lineCap = c.lineJoin = "round";
    for (const op of ops) {
      if (op.kind === "base") {
        c.drawImage(op.canvas, 0, 0);
      } else if (op.kind === "brush") {
        c.lineWidth = 2 * op.r;
        c.beginPath();
        c.moveTo(op.points[0][0], op.points[0][1]);
        for (const [x, y] of op.points) c.lineTo(x, y);
        if (op.points.length === 1) c.lineTo(op.points[0][0] + 0.01, op.points[0][1]);
        c.stroke();
      } else if (op.kind === "polygon") {
        c.beginPath();
        c.moveTo(op.points[0][0], op.points[0][1]);
        for (const [x, y] of op.points.slice(1)) c.lineTo(x, y);
        c.closePath();
        c.fill();
      }
    }
    c.restore();
  }

  function redraw() {
    const r = region.getContext("2d");
    r.clearRect(0, 0, W, H);
    paintRegion(r, "#fff");
    const t = tint.getContext("2d");
    t.clearRect(0, 0, W, H);
    t.globalCompositeOperation = "source-over";
    t.drawImage(region, 0, 0);
    t.globalCompositeOperation = "source-in";
    t.fillStyle = "rgb(255, 0, 90)";
    t.fillRect(0, 0, W, H);
    ctx.clearRect(0, 0, W, H);
    ctx.globalAlpha = 0.6;
    ctx.drawImage(tint, 0, 0);
    ctx.globalAlpha = 1;
    ctx.lineWidth = Math.max(1, 2 / zoom);
    ctx.strokeStyle = "#ffd400";
    for (const op of ops) if (op.kind === "box") ctx.strokeRect(op.x0, op.y0, op.x1 - op.x0, op.y1 - op.y0);
    if (drag) ctx.strokeRect(Math.min(drag.x0, drag.x), Math.min(drag.y0, drag.y), Math.abs(drag.x - drag.x0), Math.abs(drag.y - drag.y0));
    if (pending.length) {
      ctx.strokeStyle = "#00e0ff";
      ctx.beginPath();
      ctx.moveTo(pending[0][0], pending[0][1]);
      for (const [x, y] of pending) ctx.lineTo(x, y);
      ctx.stroke();
      ctx.fillStyle = "#00e0ff";
      for (const [x, y] of pending) ctx.fillRect(x - 2 / zoom, y - 2 / zoom, 4 / zoom, 4 / zoom);
    }
  }

  function at(event) {
    const box = canvas.getBoundingClientRect();
    const x = (event.clientX - box.left) * W / box.width, y = (event.clientY - box.top) * H / box.height;
    return [Math.min(W, Math.max(0, x)), Math.min(H, Math.max(0, y))];
  }

  function setTool(name) {
    closePolygon(false);
    tool = name;
    for (const b of document.querySelectorAll(".tool")) b.classList.toggle("chosen", b.dataset.tool === name);
  }

  function closePolygon(keep) {
    if (keep && pending.length >= 3) ops.push({kind: "polygon", points: pending});
    pending = [];
    redraw();
  }

  function undo() {
    if (pending.length) pending.pop();
    else ops.pop();
    redraw();
  }

  function setZoom(z) {
    zoom = Math.min(16, Math.max(0.1, z));
    stage.style.width = W * zoom + "px";
    stage.style.height = H * zoom + "px";
    document.getElementById("zoom-level").textContent = Math.round(zoom * 100) + "%";
    redraw();
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = at(e);
    if (tool === "brush") {
      stroke = {kind: "brush", r: Number(size.value) / 2, points: [[x, y]]};
      ops.push(stroke);
    } else if (tool === "box") {
      drag = {x0: x, y0: y, x: x, y: y};
    } else if (tool === "polygon") {
      if (pending.length >= 3 && Math.hypot(x - pending[0][0], y - pending[0][1]) * zoom < 8) closePolygon(true);
      else pending.push([x, y]);
    }
    redraw();
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = at(e);
    if (stroke) { stroke.points.push([x, y]); redraw(); }
    if (drag) { drag.x = x; drag.y = y; redraw(); }
  });
  canvas.addEventListener("pointerup", () => {
    stroke = null;
    if (drag) {
      const x0 = Math.round(Math.min(drag.x0, drag.x)), x1 = Math.round(Math.max(drag.x0, drag.x));
      const y0 = Math.round(Math.min(drag.y0, drag.y)), y1 = Math.round(Math.max(drag.y0, drag.y));
      if (x1 > x0 && y1 > y0) ops.push({kind: "box", x0, y0, x1, y1});
      drag = null;
    }
    redraw();
  });
  canvas.addEventListener("dblclick", () => { if (tool === "polygon") { pending.pop(); closePolygon(true); } });
  viewport.addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(zoom * (e.deltaY < 0 ? 1.25 : 0.8));
  }, {passive: false});

  for (const b of document.querySelectorAll(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("zoom-in").addEventListener("click", () => setZoom(zoom * 1.25));
  document.getElementById("zoom-out").addEventListener("click", () => setZoom(zoom * 0.8));

  const form = document.getElementById("mask-form");
  form.addEventListener("submit", () => {
    closePolygon(true);
    const out = document.createElement("canvas");
    out.width = W; out.height = H;
    const o = out.getContext("2d");
    o.fillStyle = "#000";
    o.fillRect(0, 0, W, H);
    paintRegion(o, "#fff");
    document.getElementById("mask-data").value = out.toDataURL("image/png");
    document.getElementById("boxes-data").value = JSON.stringify(
      ops.filter((op) => op.kind === "box").map((op) => [op.x0, op.y0, op.x1, op.y1]));
  });

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    const k = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); undo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (k === "b") setTool("brush");
    else if (k === "p") setTool("polygon");
    else if (k === "x") setTool("box");
    else if (k === "u") undo();
    else if (k === "enter" && pending.length) { e.preventDefault(); closePolygon(true); }
    else if (k === "escape") { pending = []; redraw(); }
    else if (k === "+" || k === "=") setZoom(zoom * 1.25);
    else if (k === "-") setZoom(zoom * 0.8);
    else if (k === "s") { e.preventDefault(); form.requestSubmit(); }
  });

  // the annotator's saved region (as the first, undoable step) and boxes
  for (const [x0, y0, x1, y1] of JSON.parse(document.getElementById("saved-boxes").textContent)) ops.push({kind: "box", x0, y0, x1, y1});
  if (canvas.dataset.mine) {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = W; c.height = H;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const data = g.getImageData(0, 0, W, H);
      for (let i = 0; i < data.data.length; i += 4) data.data[i + 3] = data.data[i] >= 128 ? 255 : 0;
      g.putImageData(data, 0, 0);
      ops.unshift({kind: "base", canvas: c});
      redraw();
      canvas.dataset.ready = "1";
    };
    img.src = canvas.dataset.mine;
  } else {
    canvas.dataset.ready = "1";
  }
  setZoom(Math.min(viewport.clientWidth - 16, 720) / W);
})();
