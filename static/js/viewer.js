/* The stack viewer (templates/sharing/viewer_body.html): no libraries, no inline code (the
   site's CSP allows scripts and styles from the site only).

   The server renders every picture (sharing/frames.py); this script only asks for them and
   shows them on a canvas. It reads the series' manifest (instances in order, frame counts, the
   frame URL template, the header's window) and keeps a flat list of positions, one per frame
   of each instance, so a CT stack and a multi-frame cine scroll alike.

   - First picture: the page names the first frame's URL, fetched at once beside the manifest.
   - Prefetch: a few positions ahead (in the direction of travel) and behind, at most
     IN_FLIGHT requests at a time; requests for positions that left that window, or for a
     window/level no longer wanted, are aborted. Pictures are kept as blobs (small JPEGs) in an
     LRU; only a few are kept decoded.
   - Window/level: presets ask for `preset=<name>`; dragging asks for `window=center,width`,
     debounced while the pointer moves. The old picture stays until the new one arrives.
   - Refusals: a 404 means access ended (withdrawn, expired, never there): everything stops
     and the viewer says so. A redirect to the sign-in page means the session ended.
   - Requests the person did not ask for themselves (prefetch, cine) carry
     X-Portal-Background: 1, so they do not count as activity for the session's idle timeout.

   The stage element exposes data-displayed (URL of the picture shown) and data-drawn (how
   many pictures were drawn) for the browser tests. */
(function () {
  "use strict";

  var root = document.getElementById("viewer");
  if (!root || !window.fetch || !window.AbortController || !window.Map) {
    return;
  }

  var AHEAD = 8;
  var BEHIND = 3;
  var IN_FLIGHT = 4;
  var BLOB_CACHE = 400;
  var BITMAP_CACHE = 16;
  var WINDOW_DEBOUNCE_MS = 150;
  var WINDOW_THROTTLE_MS = 400;
  var STACK_FRAME_MS = 100; // cine through a stack of single images: 10 per second
  var DRAG_PIXELS_PER_IMAGE = 6;
  var WHEEL_STEP = 50; // a mouse notch is about 100; trackpads send many small deltas
  var ZOOM_STEP = 1.25;
  var ZOOM_MIN = 0.25;
  var ZOOM_MAX = 16;
  var LOADING_NOTICE_MS = 250;

  var stage = document.getElementById("viewer-stage");
  var canvas = stage.querySelector("canvas");
  var context = canvas.getContext("2d");
  var slider = document.getElementById("viewer-slider");
  var statusText = document.getElementById("viewer-status");
  var positionText = document.getElementById("viewer-position");
  var instanceText = document.getElementById("viewer-instance");
  var frameText = document.getElementById("viewer-frame");
  var windowText = document.getElementById("viewer-window");
  var zoomText = document.getElementById("viewer-zoom");
  var playButton = root.querySelector("[data-action='play']");
  var toolButtons = Array.prototype.slice.call(root.querySelectorAll("[data-tool]"));
  var presetButtons = Array.prototype.slice.call(root.querySelectorAll("[data-preset]"));

  var state = {
    manifest: null,
    positions: [],
    index: 0,
    direction: 1,
    firstUrl: root.getAttribute("data-first-frame-url"),
    // The window asked of the server ("" = the header's own), and the one the person is
    // choosing (differs from it only while a drag waits for its debounce).
    query: "",
    wantedQuery: "",
    lastApplied: 0,
    window: null, // {center, width} when known
    windowLabel: "Default window",
    preset: "default",
    grayscale: true,
    zoom: 1,
    panX: 0,
    panY: 0,
    tool: "scroll",
    playing: false,
    stopped: false,
    bitmap: null,
    shownUrl: "",
    drawn: 0
  };

  var blobs = new Map(); // url -> {state: "loading"|"done"|"error", blob, controller}
  var inFlight = new Map();
  var bitmaps = new Map(); // url -> ImageBitmap (or an <img> where createImageBitmap is missing)
  var timers = { window: 0, loading: 0, cine: 0 };

  // --- Positions and URLs ---------------------------------------------------------------------

  function count() {
    return state.positions.length || Number(root.getAttribute("data-image-count")) || 1;
  }

  function urlAt(index) {
    if (!state.manifest) {
      return index === 0 ? withQuery(state.firstUrl) : "";
    }
    var position = state.positions[index];
    var url = state.manifest.frame_url
      .replace("{instance}", position.instance.id)
      .replace("{frame}", String(position.frame));
    return withQuery(url);
  }

  function withQuery(url) {
    return state.query ? url + "?" + state.query : url;
  }

  function currentUrl() {
    return urlAt(state.index);
  }

  function clampIndex(index) {
    return Math.max(0, Math.min(count() - 1, index));
  }

  // --- Fetching, with a limit in flight and stale requests cancelled --------------------------

  function wantedUrls() {
    var urls = [currentUrl()];
    if (!state.manifest) {
      return urls;
    }
    var total = state.positions.length;
    var ahead = state.direction >= 0 ? 1 : -1;
    for (var step = 1; step <= AHEAD; step += 1) {
      var next = state.index + ahead * step;
      if (state.playing) {
        next = (next + total) % total;
      }
      if (next >= 0 && next < total) {
        urls.push(urlAt(next));
      }
    }
    for (var back = 1; back <= BEHIND; back += 1) {
      var previous = state.index - ahead * back;
      if (previous >= 0 && previous < total) {
        urls.push(urlAt(previous));
      }
    }
    return urls;
  }

  function pump() {
    if (state.stopped) {
      return;
    }
    var wanted = wantedUrls();
    var keep = new Set(wanted);
    inFlight.forEach(function (entry, url) {
      if (!keep.has(url)) {
        entry.controller.abort();
      }
    });
    var current = wanted[0];
    var currentEntry = blobs.get(current);
    if (!currentEntry && inFlight.size >= IN_FLIGHT) {
      // The picture on screen goes first: make room by dropping the furthest prefetch.
      var furthest = null;
      inFlight.forEach(function (entry) {
        furthest = entry;
      });
      if (furthest) {
        furthest.controller.abort();
      }
    }
    for (var i = 0; i < wanted.length && inFlight.size < IN_FLIGHT; i += 1) {
      if (!blobs.has(wanted[i])) {
        load(wanted[i], i > 0 || state.playing);
      }
    }
  }

  function load(url, background) {
    var controller = new AbortController();
    var entry = { state: "loading", blob: null, controller: controller };
    blobs.set(url, entry);
    inFlight.set(url, entry);
    var headers = background ? { "X-Portal-Background": "1" } : {};
    fetch(url, { credentials: "same-origin", signal: controller.signal, headers: headers })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (response.ok && type.indexOf("image/") === 0) {
          return response.blob();
        }
        if (response.status === 404) {
          throw refusal("gone", "These images are no longer available to you.");
        }
        if (response.redirected || response.status === 401 || response.status === 403) {
          throw refusal("signed-out", "Your session has ended. Sign in again to go on.");
        }
        return response.text().then(function (text) {
          var message = response.status === 400 || response.status === 422 ? text : "";
          throw refusal("error", message || "This image could not be loaded. Try again later.");
        });
      })
      .then(function (blob) {
        entry.state = "done";
        entry.blob = blob;
        trimBlobs();
        if (url === currentUrl()) {
          show();
        }
      })
      .catch(function (error) {
        if (controller.signal.aborted) {
          if (blobs.get(url) === entry) {
            blobs.delete(url);
          }
          return;
        }
        entry.state = "error";
        var kind = error && error.kind ? error.kind : "error";
        var message = error && error.kind ? error.message : "The connection failed. Try again later.";
        if (kind === "gone" || kind === "signed-out") {
          stopEverything(message);
        } else if (url === currentUrl()) {
          setStatus(message, true);
          // Not kept: moving away and back asks again.
          blobs.delete(url);
        } else {
          blobs.delete(url);
        }
      })
      .then(function () {
        if (inFlight.get(url) === entry) {
          inFlight.delete(url);
        }
        pump();
      });
  }

  function refusal(kind, message) {
    var error = new Error(message);
    error.kind = kind;
    return error;
  }

  function stopEverything(message) {
    state.stopped = true;
    pause();
    inFlight.forEach(function (entry) {
      entry.controller.abort();
    });
    setStatus(message, true);
  }

  function trimBlobs() {
    if (blobs.size <= BLOB_CACHE) {
      return;
    }
    var keep = new Set(wantedUrls());
    var iterator = blobs.keys();
    while (blobs.size > BLOB_CACHE) {
      var step = iterator.next();
      if (step.done) {
        break;
      }
      var entry = blobs.get(step.value);
      if (entry.state === "done" && !keep.has(step.value)) {
        blobs.delete(step.value);
      }
    }
  }

  // --- Showing ---------------------------------------------------------------------------------

  function decode(url, blob) {
    var known = bitmaps.get(url);
    if (known) {
      bitmaps.delete(url); // most recently used goes last
      bitmaps.set(url, known);
      return Promise.resolve(known);
    }
    var decoded;
    if (window.createImageBitmap) {
      decoded = window.createImageBitmap(blob);
    } else {
      decoded = new Promise(function (resolve, reject) {
        var image = new Image();
        var objectUrl = URL.createObjectURL(blob);
        image.onload = function () {
          URL.revokeObjectURL(objectUrl);
          resolve(image);
        };
        image.onerror = function () {
          URL.revokeObjectURL(objectUrl);
          reject(new Error("undecodable"));
        };
        image.src = objectUrl;
      });
    }
    return decoded.then(function (bitmap) {
      bitmaps.set(url, bitmap);
      bitmaps.forEach(function (old, oldUrl) {
        if (bitmaps.size > BITMAP_CACHE && old !== state.bitmap && old !== bitmap) {
          bitmaps.delete(oldUrl);
          if (old.close) {
            old.close();
          }
        }
      });
      return bitmap;
    });
  }

  function show() {
    var url = currentUrl();
    var entry = blobs.get(url);
    if (!entry || entry.state !== "done") {
      clearTimeout(timers.loading);
      timers.loading = setTimeout(function () {
        if (!state.stopped && currentUrl() === url && state.shownUrl !== url) {
          setStatus("Loading…", false);
        }
      }, LOADING_NOTICE_MS);
      return;
    }
    decode(url, entry.blob).then(
      function (bitmap) {
        if (currentUrl() !== url) {
          return;
        }
        clearTimeout(timers.loading);
        state.bitmap = bitmap;
        state.shownUrl = url;
        state.drawn += 1;
        draw();
        stage.setAttribute("data-displayed", url);
        stage.setAttribute("data-drawn", String(state.drawn));
        if (!state.stopped) {
          setStatus("", false);
        }
      },
      function () {
        setStatus("This image could not be shown.", true);
      }
    );
  }

  function resizeCanvas() {
    var ratio = window.devicePixelRatio || 1;
    var width = Math.max(1, Math.round(stage.clientWidth * ratio));
    var height = Math.max(1, Math.round(stage.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
  }

  function draw() {
    resizeCanvas();
    var ratio = window.devicePixelRatio || 1;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
    var bitmap = state.bitmap;
    if (!bitmap) {
      return;
    }
    var fit = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    var scale = fit * state.zoom;
    var width = bitmap.width * scale;
    var height = bitmap.height * scale;
    var left = (canvas.width - width) / 2 + state.panX * ratio;
    var top = (canvas.height - height) / 2 + state.panY * ratio;
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, left, top, width, height);
  }

  function setStatus(message, isError) {
    statusText.textContent = message;
    statusText.classList.toggle("is-error", Boolean(isError) && Boolean(message));
  }

  function updateTexts() {
    var total = count();
    var number = state.index + 1;
    positionText.textContent = number + " / " + total;
    slider.max = String(total);
    slider.value = String(number);
    slider.setAttribute("aria-valuetext", "Image " + number + " of " + total);
    var position = state.positions[state.index];
    if (position) {
      var instanceNumber = position.instance.number;
      instanceText.textContent = "Instance " + (instanceNumber === null ? "–" : instanceNumber);
      frameText.textContent = position.instance.frames > 1
        ? "Frame " + position.frame + " / " + position.instance.frames
        : "";
    }
  }

  function updateWindowText() {
    if (!state.window) {
      windowText.textContent = state.windowLabel;
      return;
    }
    var text = "W " + round(state.window.width) + " · L " + round(state.window.center);
    windowText.textContent = state.windowLabel ? state.windowLabel + " · " + text : text;
  }

  function round(value) {
    return Math.abs(value) >= 100 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
  }

  // --- Moving through the stack ----------------------------------------------------------------

  function go(index) {
    var next = clampIndex(index);
    if (next === state.index) {
      return;
    }
    state.direction = next > state.index ? 1 : -1;
    state.index = next;
    updateTexts();
    show();
    pump();
  }

  function step(by) {
    pause();
    go(state.index + by);
  }

  // --- Window / level ---------------------------------------------------------------------------

  function presetWindow(name) {
    if (!state.manifest) {
      return null;
    }
    if (name === "default") {
      return state.manifest.window;
    }
    return state.manifest.presets[name] || null;
  }

  var PRESET_LABELS = {};
  presetButtons.forEach(function (button) {
    PRESET_LABELS[button.getAttribute("data-preset")] = button.textContent.trim();
  });

  function choosePreset(name) {
    if (!state.grayscale || state.stopped) {
      return;
    }
    state.preset = name;
    state.window = presetWindow(name);
    state.windowLabel = name === "default" ? "Default" : PRESET_LABELS[name];
    if (name === "default" && !state.window) {
      state.windowLabel = "Default window";
    }
    state.wantedQuery = name === "default" ? "" : "preset=" + encodeURIComponent(name);
    pressPreset(name);
    updateWindowText();
    applyWindow();
  }

  function pressPreset(name) {
    presetButtons.forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-preset") === name));
    });
  }

  function dragWindow(center, width) {
    state.preset = "";
    pressPreset("");
    state.window = { center: center, width: Math.max(1, width) };
    state.windowLabel = "";
    state.wantedQuery = "window=" + round(state.window.center) + "," + round(state.window.width);
    updateWindowText();
    clearTimeout(timers.window);
    if (Date.now() - state.lastApplied >= WINDOW_THROTTLE_MS) {
      applyWindow(); // some feedback while the drag goes on
    } else {
      timers.window = setTimeout(applyWindow, WINDOW_DEBOUNCE_MS);
    }
  }

  function applyWindow() {
    clearTimeout(timers.window);
    state.lastApplied = Date.now();
    if (state.query === state.wantedQuery) {
      return;
    }
    state.query = state.wantedQuery;
    show();
    pump();
  }

  // --- Zoom and pan ------------------------------------------------------------------------------

  function zoomBy(factor, offsetX, offsetY) {
    var zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, state.zoom * factor));
    var ratio = zoom / state.zoom;
    // Keep the point under the pointer (or the centre) where it is.
    var x = offsetX === undefined ? 0 : offsetX - stage.clientWidth / 2;
    var y = offsetY === undefined ? 0 : offsetY - stage.clientHeight / 2;
    state.panX = x - (x - state.panX) * ratio;
    state.panY = y - (y - state.panY) * ratio;
    state.zoom = zoom;
    zoomText.textContent = "Zoom " + Math.round(zoom * 100) + "%";
    draw();
  }

  function fit() {
    state.zoom = 1;
    state.panX = 0;
    state.panY = 0;
    zoomText.textContent = "Zoom 100%";
    draw();
  }

  // --- Cine ----------------------------------------------------------------------------------------

  function frameTime() {
    var position = state.positions[state.index];
    if (position && position.instance.frames > 1 && state.manifest.frame_time_ms) {
      return state.manifest.frame_time_ms;
    }
    return STACK_FRAME_MS;
  }

  function play() {
    if (!state.manifest || state.positions.length < 2 || state.stopped) {
      return;
    }
    state.playing = true;
    state.direction = 1;
    playButton.setAttribute("aria-pressed", "true");
    playButton.textContent = "Pause";
    tick();
  }

  function tick() {
    clearTimeout(timers.cine);
    if (!state.playing) {
      return;
    }
    var next = (state.index + 1) % state.positions.length;
    var entry = blobs.get(urlAt(next));
    if (entry && entry.state === "done") {
      state.direction = 1;
      state.index = next;
      updateTexts();
      show();
    }
    // Not there yet: wait for it rather than skip it.
    pump();
    timers.cine = setTimeout(tick, frameTime());
  }

  function pause() {
    if (!state.playing) {
      return;
    }
    state.playing = false;
    clearTimeout(timers.cine);
    playButton.setAttribute("aria-pressed", "false");
    playButton.textContent = "Play";
  }

  // --- Tools and input ----------------------------------------------------------------------------

  function chooseTool(tool) {
    state.tool = tool;
    toolButtons.forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-tool") === tool));
    });
    stage.classList.toggle("tool-window", tool === "window");
    stage.classList.toggle("tool-pan", tool === "pan");
  }

  root.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button || !root.contains(button)) {
      return;
    }
    var tool = button.getAttribute("data-tool");
    var preset = button.getAttribute("data-preset");
    var action = button.getAttribute("data-action");
    if (tool) {
      chooseTool(tool);
    } else if (preset) {
      choosePreset(preset);
    } else if (action === "zoom-in") {
      zoomBy(ZOOM_STEP);
    } else if (action === "zoom-out") {
      zoomBy(1 / ZOOM_STEP);
    } else if (action === "fit") {
      fit();
    } else if (action === "play") {
      if (state.playing) {
        pause();
      } else {
        play();
      }
    }
  });

  slider.addEventListener("input", function () {
    pause();
    go(Number(slider.value) - 1);
  });

  var wheelRest = 0;
  stage.addEventListener(
    "wheel",
    function (event) {
      event.preventDefault();
      if (event.ctrlKey || event.metaKey) {
        zoomBy(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, event.offsetX, event.offsetY);
        return;
      }
      var delta = event.deltaMode === 1 ? event.deltaY * 40 : event.deltaMode === 2 ? event.deltaY * 800 : event.deltaY;
      if (Math.abs(delta) >= WHEEL_STEP) {
        wheelRest = 0;
        step(delta > 0 ? 1 : -1); // a mouse notch: one image, however large its delta
        return;
      }
      wheelRest += delta;
      if (Math.abs(wheelRest) >= WHEEL_STEP) {
        step(wheelRest > 0 ? 1 : -1);
        wheelRest = 0;
      }
    },
    { passive: false }
  );

  var KEYS = {
    ArrowDown: function () { step(1); },
    ArrowRight: function () { step(1); },
    ArrowUp: function () { step(-1); },
    ArrowLeft: function () { step(-1); },
    PageDown: function () { step(10); },
    PageUp: function () { step(-10); },
    Home: function () { pause(); go(0); },
    End: function () { pause(); go(count() - 1); },
    "+": function () { zoomBy(ZOOM_STEP); },
    "=": function () { zoomBy(ZOOM_STEP); },
    "-": function () { zoomBy(1 / ZOOM_STEP); },
    "0": fit,
    " ": function () {
      if (state.playing) {
        pause();
      } else {
        play();
      }
    }
  };

  stage.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    var handler = KEYS[event.key];
    if (handler) {
      event.preventDefault();
      handler();
    }
  });

  var drag = null;

  stage.addEventListener("contextmenu", function (event) {
    event.preventDefault(); // the right button changes the window
  });

  stage.addEventListener("pointerdown", function (event) {
    var mode = state.tool;
    if (event.button === 2) {
      mode = "window";
    } else if (event.button === 1) {
      mode = "pan";
    } else if (event.button !== 0) {
      return;
    }
    if (mode === "window" && (!state.grayscale || !state.window)) {
      return;
    }
    event.preventDefault();
    stage.focus({ preventScroll: true });
    stage.setPointerCapture(event.pointerId);
    stage.classList.add("is-dragging");
    if (mode === "scroll") {
      pause();
    }
    drag = {
      id: event.pointerId,
      mode: mode,
      x: event.clientX,
      y: event.clientY,
      index: state.index,
      panX: state.panX,
      panY: state.panY,
      window: state.window ? { center: state.window.center, width: state.window.width } : null
    };
  });

  stage.addEventListener("pointermove", function (event) {
    if (!drag || event.pointerId !== drag.id) {
      return;
    }
    var dx = event.clientX - drag.x;
    var dy = event.clientY - drag.y;
    if (drag.mode === "scroll") {
      go(drag.index + Math.round(dy / DRAG_PIXELS_PER_IMAGE));
    } else if (drag.mode === "pan") {
      state.panX = drag.panX + dx;
      state.panY = drag.panY + dy;
      draw();
    } else if (drag.mode === "window") {
      // Right: wider (less contrast); down: higher level (darker). Steps grow with the width,
      // so a lung window and a brain window both move at a usable pace.
      var pace = Math.max(drag.window.width, 10) / 250;
      dragWindow(drag.window.center + dy * pace, drag.window.width + dx * pace);
    }
  });

  function endDrag(event) {
    if (!drag || event.pointerId !== drag.id) {
      return;
    }
    var mode = drag.mode;
    drag = null;
    stage.classList.remove("is-dragging");
    if (mode === "window") {
      applyWindow();
    }
  }

  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      pause();
    }
  });

  if (window.ResizeObserver) {
    new ResizeObserver(draw).observe(stage);
  } else {
    window.addEventListener("resize", draw);
  }

  // --- Start: the first picture and the manifest, side by side --------------------------------

  function start(manifest) {
    state.manifest = manifest;
    state.positions = [];
    manifest.instances.forEach(function (instance) {
      for (var frame = 1; frame <= instance.frames; frame += 1) {
        state.positions.push({ instance: instance, frame: frame });
      }
    });
    if (!state.positions.length) {
      setStatus("No images of this series can be shown yet.", true);
      return;
    }
    state.grayscale = manifest.grayscale !== false;
    if (state.grayscale) {
      state.window = manifest.window;
      state.windowLabel = manifest.window_from_header ? "Default" : "Default window";
    } else {
      state.window = null;
      state.windowLabel = "Colour image";
      presetButtons.concat(toolButtons.filter(function (button) {
        return button.getAttribute("data-tool") === "window";
      })).forEach(function (button) {
        button.disabled = true;
      });
    }
    if (state.positions.length < 2) {
      playButton.disabled = true;
    }
    updateTexts();
    updateWindowText();
    show();
    pump();
  }

  chooseTool("scroll");
  updateTexts();
  if (state.firstUrl) {
    pump();
  }
  fetch(root.getAttribute("data-manifest-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (response.status === 404) {
        throw refusal("gone", "These images are no longer available to you.");
      }
      if (!response.ok || type.indexOf("application/json") !== 0) {
        throw refusal(response.redirected ? "signed-out" : "error",
          response.redirected ? "Your session has ended. Sign in again to go on."
            : "The list of images could not be loaded. Try again later.");
      }
      return response.json();
    })
    .then(start)
    .catch(function (error) {
      var message = error && error.kind ? error.message : "The list of images could not be loaded. Try again later.";
      if (error && (error.kind === "gone" || error.kind === "signed-out")) {
        stopEverything(message);
      } else {
        setStatus(message, true);
      }
    });
})();
