// The signature pad of the front desk's authorization form (templates/consent/authorization_form.html).
// Pointer events cover touch, pen and mouse alike. Each stroke is drawn on the canvas, and the
// drawing is copied as a PNG data URL into the hidden `signature` field, which is what the form
// posts; Clear empties both. Choosing the paper form hides the pad and shows the file input.
(function () {
  "use strict";
  var form = document.getElementById("authorization-form");
  var canvas = document.getElementById("signature-pad");
  if (!form || !canvas || !canvas.getContext) {
    return;
  }
  var field = form.querySelector("input[name=signature]");
  var clear = document.getElementById("signature-clear");
  var block = document.getElementById("signature-block");
  var scanField = form.querySelector("input[name=scan]");
  var scanGroup = scanField ? scanField.closest(".field") : null;
  var context = canvas.getContext("2d");
  var drawing = false;
  var inked = false;
  var last = null;

  document.documentElement.classList.add("has-js");

  function reset() {
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.strokeStyle = "#10204a";
    context.lineWidth = 3;
    context.lineCap = "round";
    context.lineJoin = "round";
    inked = false;
    if (field) {
      field.value = "";
    }
  }

  function position(event) {
    var box = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - box.left) * (canvas.width / box.width),
      y: (event.clientY - box.top) * (canvas.height / box.height)
    };
  }

  function save() {
    if (field && inked) {
      field.value = canvas.toDataURL("image/png");
    }
  }

  canvas.addEventListener("pointerdown", function (event) {
    event.preventDefault();
    drawing = true;
    last = position(event);
    if (canvas.setPointerCapture) {
      canvas.setPointerCapture(event.pointerId);
    }
    context.beginPath();
    context.arc(last.x, last.y, context.lineWidth / 2, 0, Math.PI * 2);
    context.fillStyle = context.strokeStyle;
    context.fill();
    inked = true;
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!drawing) {
      return;
    }
    event.preventDefault();
    var point = position(event);
    context.beginPath();
    context.moveTo(last.x, last.y);
    context.lineTo(point.x, point.y);
    context.stroke();
    last = point;
    inked = true;
  });
  function end() {
    if (drawing) {
      drawing = false;
      save();
    }
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", end);
  if (clear) {
    clear.addEventListener("click", reset);
  }

  function showMethod() {
    var chosen = form.querySelector("input[name=method]:checked");
    var paper = chosen && chosen.value === "paper";
    if (block) {
      block.hidden = paper;
    }
    if (scanGroup) {
      scanGroup.hidden = !paper;
    }
  }
  form.querySelectorAll("input[name=method]").forEach(function (input) {
    input.addEventListener("change", showMethod);
  });
  form.addEventListener("submit", save);
  reset();
  showMethod();
})();
