/* Live study progress: keeps templates/studies/_progress.html up to date without a reload.

   Every element with data-progress-url is polled every 2 s for JSON like
   {"state", "label", "published", "total", "percent", "available_until", "done"} (see
   studies/views.py study_progress) until the study is done (available or deleted). Errors back
   off up to a minute; a refusal (signed out, no access any more) stops for good. Nothing is
   asked while the page is hidden, nor after ten minutes without anyone at it: every poll
   counts as activity for the session's idle timeout, so an unattended page would otherwise
   keep a session signed in forever. Both resume as soon as someone is back. */
(function () {
  "use strict";

  if (!window.fetch || !document.querySelectorAll) {
    return;
  }

  var INTERVAL = 2000;
  var MAX_DELAY = 60000;
  var IDLE_AFTER = 10 * 60 * 1000;
  var FINAL_STATES = { available: true, shredded: true };
  // The wording of _progress.html; change both together.
  var DELETED_TEXT = "Deleted: the images can no longer be opened.";
  var EMPTY_TEXT = "No images received yet.";

  var lastActivity = Date.now();
  var watchers = [];

  function progressText(data) {
    if (data.state === "shredded") {
      return DELETED_TEXT;
    }
    if (!data.total) {
      return EMPTY_TEXT;
    }
    return data.published + " of " + data.total + " image" + (data.total === 1 ? "" : "s") + " published";
  }

  function formatDate(iso) {
    var parts = iso.split("-");
    var date = new Date(Number(parts[0]), Number(parts[1]) - 1, Number(parts[2]));
    return date.toLocaleDateString(document.documentElement.lang || undefined,
      { year: "numeric", month: "short", day: "numeric" });
  }

  function setText(element, text) {
    // Only real changes: the text is a live region, and each change is read out.
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  function Watcher(box) {
    this.box = box;
    this.url = box.getAttribute("data-progress-url");
    this.bar = box.querySelector("[data-progress-bar]");
    this.text = box.querySelector("[data-progress-text]");
    this.label = box.querySelector("[data-progress-label]");
    this.until = box.querySelector("[data-progress-until]");
    this.untilDate = box.querySelector("[data-progress-available-until]");
    this.finished = !!FINAL_STATES[box.getAttribute("data-progress-state")];
    this.delay = INTERVAL;
    this.timer = null;
    this.busy = false;
  }

  Watcher.prototype.schedule = function (delay) {
    this.cancel();
    if (this.finished || document.hidden) {
      return;
    }
    var watcher = this;
    this.timer = window.setTimeout(function () {
      watcher.timer = null;
      watcher.poll();
    }, delay);
  };

  Watcher.prototype.cancel = function () {
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
      this.timer = null;
    }
  };

  Watcher.prototype.poll = function () {
    if (this.finished || this.busy || document.hidden) {
      return;
    }
    if (Date.now() - lastActivity > IDLE_AFTER) {
      return; // resumed by the next sign of someone at the page (see wake)
    }
    var watcher = this;
    watcher.busy = true;
    window.fetch(watcher.url, {
      credentials: "same-origin",
      cache: "no-store",
      // A poll is not the person using the page: it must not keep an idle session alive.
      headers: { Accept: "application/json", "X-Portal-Background": "1" }
    }).then(function (response) {
      // Redirected: to the sign-in page, the session is over. 4xx: no access any more.
      if (response.redirected || (response.status >= 400 && response.status < 500)) {
        watcher.finished = true;
        return null;
      }
      if (!response.ok) {
        throw new Error("status " + response.status);
      }
      return response.json();
    }).then(function (data) {
      watcher.busy = false;
      if (data) {
        watcher.apply(data);
        watcher.delay = INTERVAL;
      }
      watcher.schedule(watcher.delay);
    }).catch(function () {
      watcher.busy = false;
      watcher.delay = Math.min(watcher.delay * 2, MAX_DELAY);
      watcher.schedule(watcher.delay);
    });
  };

  Watcher.prototype.apply = function (data) {
    var box = this.box;
    box.setAttribute("data-progress-state", data.state);
    if (this.bar) {
      if (data.total > 0) {
        this.bar.max = data.total;
        this.bar.value = data.published;
      } else {
        this.bar.removeAttribute("value"); // indeterminate: nothing to count yet
      }
      this.bar.textContent = data.percent + "%";
      this.bar.hidden = data.state === "shredded";
    }
    if (this.label) {
      setText(this.label, data.label);
      this.label.className = "badge badge-state-" + data.state;
    }
    setText(this.text, progressText(data));
    if (this.until) {
      this.until.hidden = data.state === "shredded";
    }
    if (this.untilDate && data.available_until &&
        this.untilDate.getAttribute("datetime") !== data.available_until) {
      this.untilDate.setAttribute("datetime", data.available_until);
      setText(this.untilDate, formatDate(data.available_until));
    }
    if (data.done) {
      this.finished = true;
      this.cancel();
    }
  };

  function wake() {
    var wasIdle = Date.now() - lastActivity > IDLE_AFTER;
    lastActivity = Date.now();
    if (wasIdle) {
      watchers.forEach(function (watcher) { watcher.poll(); });
    }
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-progress-url]"), function (box) {
    var watcher = new Watcher(box);
    watchers.push(watcher);
    watcher.schedule(INTERVAL);
  });
  if (!watchers.length) {
    return;
  }

  ["pointerdown", "pointermove", "keydown", "scroll", "focus"].forEach(function (type) {
    window.addEventListener(type, wake, { passive: true });
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      lastActivity = Date.now(); // someone brought the page back
    }
    watchers.forEach(function (watcher) {
      if (document.hidden) {
        watcher.cancel();
      } else {
        watcher.poll();
      }
    });
  });

  // Back from the back-forward cache: what was shown may be old.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      watchers.forEach(function (watcher) { watcher.poll(); });
    }
  });
}());
