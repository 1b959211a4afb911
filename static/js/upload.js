/* Upload images: each file in a request of its own, a few at a time, with progress.

   Without this script the form posts all files at once and the server answers with a
   results page; with it, files are sent as they are chosen or dropped (folders included),
   each as the raw request body, and the server answers each with JSON results
   (a zip gives one result per file inside). See studies/upload_views.py. */
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (!form || !window.XMLHttpRequest || !window.Map) {
    return;
  }

  var CONCURRENCY = 3;
  // Files a disc's viewer program is made of, or documents beside the images: never DICOM, so
  // they are set aside here instead of being sent (a viewer can be hundreds of megabytes).
  var NOT_IMAGES = /\.(exe|dll|msi|cab|bat|cmd|com|sys|ocx|jar|class|js|css|html?|xml|inf|ini|txt|pdf|rtf|docx?|ico|png|jpe?g|gif|bmp|chm|hlp|lnk|url|plist|dylib|so|sh|app|mp4|avi|mov|wmv)$/i;
  var OS_CLUTTER = /(^|\/)(\.DS_Store|Thumbs\.db|desktop\.ini|\._[^/]*)$|(^|\/)__MACOSX\//i;

  var receiveUrl = form.getAttribute("action");
  var csrfInput = form.querySelector("input[name=csrfmiddlewaretoken]");
  var csrfToken = csrfInput ? csrfInput.value : "";
  var dropZone = document.getElementById("drop-zone");
  var section = document.getElementById("upload-results");
  var summary = document.getElementById("upload-summary");
  var progressBox = document.getElementById("upload-progress");
  var overall = document.getElementById("overall-progress");
  var overallText = document.getElementById("overall-text");
  var activeList = document.getElementById("upload-active");
  var cancelButton = document.getElementById("upload-cancel");
  var reconciliationUrl = form.getAttribute("data-reconciliation-url");

  var queue = [];
  var running = 0;
  var stopped = false;
  var signedOut = false;
  var jobs = [];
  var studies = new Map();
  var counts = { accepted: 0, duplicate: 0 };
  var failedJobs = [];

  form.classList.add("js-upload");

  // --- Choosing files ----------------------------------------------------------------------

  Array.prototype.forEach.call(form.querySelectorAll("input[type=file]"), function (input) {
    input.addEventListener("change", function () {
      var picked = Array.prototype.map.call(input.files, function (file) {
        return { file: file, name: file.webkitRelativePath || file.name };
      });
      input.value = "";
      add(picked);
    });
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
  });

  if (dropZone) {
    ["dragenter", "dragover"].forEach(function (type) {
      dropZone.addEventListener(type, function (event) {
        event.preventDefault();
        dropZone.classList.add("is-dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      dropZone.addEventListener(type, function () {
        dropZone.classList.remove("is-dragging");
      });
    });
    dropZone.addEventListener("drop", function (event) {
      event.preventDefault();
      filesDropped(event.dataTransfer).then(add);
    });
  }

  function filesDropped(transfer) {
    var items = transfer.items ? Array.prototype.slice.call(transfer.items) : [];
    var entries = items
      .map(function (item) {
        return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      })
      .filter(Boolean);
    if (!entries.length) {
      return Promise.resolve(
        Array.prototype.map.call(transfer.files, function (file) {
          return { file: file, name: file.name };
        })
      );
    }
    return Promise.all(entries.map(function (entry) { return walk(entry, ""); })).then(
      function (lists) { return [].concat.apply([], lists); }
    );
  }

  function walk(entry, prefix) {
    var path = prefix + entry.name;
    if (entry.isFile) {
      return new Promise(function (resolve) {
        entry.file(
          function (file) { resolve([{ file: file, name: path }]); },
          function () { resolve([]); }
        );
      });
    }
    if (!entry.isDirectory) {
      return Promise.resolve([]);
    }
    var reader = entry.createReader();
    var children = [];
    // readEntries answers in batches (about 100 at a time) until it answers with none.
    return new Promise(function (resolve) {
      function more() {
        reader.readEntries(function (batch) {
          if (!batch.length) {
            Promise.all(children.map(function (child) { return walk(child, path + "/"); })).then(
              function (lists) { resolve([].concat.apply([], lists)); }
            );
            return;
          }
          children = children.concat(Array.prototype.slice.call(batch));
          more();
        }, function () { resolve([]); });
      }
      more();
    });
  }

  // --- The queue ---------------------------------------------------------------------------

  function add(picked) {
    if (!picked.length) {
      return;
    }
    if (signedOut) {
      return;
    }
    stopped = false;
    section.hidden = false;
    progressBox.hidden = false;
    picked.forEach(function (choice) {
      if (OS_CLUTTER.test(choice.name)) {
        return;
      }
      if (NOT_IMAGES.test(choice.name)) {
        show({
          name: choice.name,
          outcome: "skipped",
          label: "Not an image",
          tone: "",
          group: "other",
          message: "Not an image file (for example part of the disc's viewer program), so it was not sent.",
          study: null
        });
        return;
      }
      var job = { file: choice.file, name: choice.name, size: choice.file.size, loaded: 0, done: false };
      jobs.push(job);
      queue.push(job);
    });
    announce("Uploading " + plural(queue.length + running, "file") + "…");
    update();
    pump();
  }

  function pump() {
    while (running < CONCURRENCY && queue.length && !stopped && !signedOut) {
      send(queue.shift());
    }
    update();
    if (!running && (!queue.length || stopped || signedOut)) {
      finish();
    }
  }

  function send(job) {
    running += 1;
    var row = document.createElement("li");
    row.className = "upload-active-item";
    var name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = job.name;
    var bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Sending " + job.name);
    var state = document.createElement("span");
    state.className = "meta";
    state.textContent = "Sending";
    row.appendChild(name);
    row.appendChild(bar);
    row.appendChild(state);
    activeList.appendChild(row);

    var xhr = new XMLHttpRequest();
    xhr.open("POST", receiveUrl);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.setRequestHeader("X-Upload-Name", encodeURIComponent(job.name));
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) {
        job.loaded = event.loaded;
        bar.value = job.size ? Math.round((100 * event.loaded) / event.total) : 100;
        if (event.loaded >= event.total) {
          state.textContent = "Checking";
        }
        update();
      }
    });
    xhr.addEventListener("load", function () {
      var body = null;
      if ((xhr.getResponseHeader("Content-Type") || "").indexOf("application/json") === 0) {
        try {
          body = JSON.parse(xhr.responseText);
        } catch (error) {
          body = null;
        }
      }
      if (body && body.results && !body.error) {
        body.studies.forEach(addStudy);
        body.results.forEach(show);
      } else if (body && body.error) {
        fail(job, body.error);
      } else if (xhr.responseURL && xhr.responseURL.indexOf("/accounts/") !== -1) {
        signedOut = true;
        fail(job, "You were signed out, so this file was not received. Sign in again and upload the files that are left.");
      } else if (xhr.status === 403) {
        signedOut = true;
        fail(job, "The portal refused this upload; reload the page and try again.");
      } else {
        fail(job, "The portal could not take this file just now (error " + xhr.status + "); try it again.");
      }
      done(job, row);
    });
    xhr.addEventListener("error", function () {
      fail(job, "The connection was lost while sending this file; try it again.");
      done(job, row);
    });
    xhr.send(job.file);
  }

  function done(job, row) {
    job.done = true;
    job.loaded = job.size;
    running -= 1;
    row.remove();
    pump();
  }

  function fail(job, message) {
    failedJobs.push(job);
    show({ name: job.name, outcome: "failed", label: "Failed", tone: "danger", group: "problem", message: message, study: null });
  }

  if (cancelButton) {
    cancelButton.addEventListener("click", function () {
      stopped = true;
      queue.splice(0).forEach(function (job) {
        job.done = true;
        job.loaded = job.size;
        failedJobs.push(job);
        show({ name: job.name, outcome: "failed", label: "Not sent", tone: "", group: "problem", message: "Not sent: you stopped the upload.", study: null });
      });
      pump();
    });
  }

  // --- Showing results ---------------------------------------------------------------------

  function show(result) {
    if (result.outcome === "accepted") {
      counts.accepted += 1;
    } else if (result.outcome === "duplicate") {
      counts.duplicate += 1;
    }
    var group = document.getElementById("group-" + result.group);
    var list = document.getElementById("list-" + result.group);
    var item = document.createElement("li");
    item.className = "upload-item";
    item.setAttribute("data-outcome", result.outcome);
    var badge = document.createElement("span");
    badge.className = "badge" + (result.tone ? " badge-" + result.tone : "");
    badge.textContent = result.label;
    var text = document.createElement("span");
    text.className = "upload-item-text";
    var name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = result.name;
    var message = document.createElement("span");
    message.className = "upload-message";
    message.textContent = result.message;
    text.appendChild(name);
    text.appendChild(document.createTextNode(" "));
    text.appendChild(message);
    item.appendChild(badge);
    item.appendChild(text);
    list.appendChild(item);
    group.hidden = false;
    var count = group.querySelector("[data-count]");
    count.textContent = String(list.children.length);
    if (result.study && studies.has(result.study)) {
      var study = studies.get(result.study);
      study.images += 1;
      study.imagesNode.textContent = plural(study.images, "image") + " from this upload";
    }
  }

  function addStudy(data) {
    var known = studies.get(data.id);
    if (known) {
      known.waiting = data.waiting;
      known.statusNode.replaceWith(studyStatus(data));
      known.statusNode = known.node.querySelector(".upload-study-status");
      return;
    }
    var node = document.createElement("li");
    node.className = "upload-study";
    node.setAttribute("data-study", data.id);
    var label = document.createElement("span");
    label.className = "upload-study-label";
    label.textContent = data.label;
    var images = document.createElement("span");
    images.className = "meta upload-study-images";
    var status = studyStatus(data);
    node.appendChild(label);
    node.appendChild(images);
    node.appendChild(status);
    document.getElementById("list-studies").appendChild(node);
    document.getElementById("group-studies").hidden = false;
    studies.set(data.id, { node: node, imagesNode: images, statusNode: status, images: 0, waiting: data.waiting });
  }

  function studyStatus(data) {
    var status = document.createElement("span");
    status.className = "upload-study-status";
    var badge = document.createElement("span");
    badge.className = "badge " + (data.waiting ? "badge-warn" : "badge-ok");
    badge.textContent = data.status;
    status.appendChild(badge);
    if (data.waiting && data.why) {
      var why = document.createElement("span");
      why.className = "meta";
      why.textContent = " " + data.why;
      status.appendChild(why);
    }
    return status;
  }

  function update() {
    var total = 0;
    var loaded = 0;
    var finished = 0;
    jobs.forEach(function (job) {
      total += job.size;
      loaded += Math.min(job.loaded, job.size);
      finished += job.done ? 1 : 0;
    });
    overall.value = total ? Math.round((100 * loaded) / total) : finished === jobs.length ? 100 : 0;
    overallText.textContent =
      finished + " of " + plural(jobs.length, "file") + " done" +
      (queue.length ? ", " + queue.length + " waiting" : "") +
      " (" + size(loaded) + " of " + size(total) + ").";
  }

  function finish() {
    progressBox.hidden = true;
    var lines = [];
    var problems = document.getElementById("list-problem").children.length;
    var others = document.getElementById("list-other").children.length;
    var waiting = 0;
    studies.forEach(function (study) {
      waiting += study.waiting ? 1 : 0;
    });
    if (counts.accepted || !(counts.duplicate || problems)) {
      lines.push(
        plural(counts.accepted, "image") + " received" +
          (counts.accepted && studies.size ? " in " + plural(studies.size, "study", "studies") : "") + "."
      );
    }
    if (counts.duplicate) {
      lines.push(plural(counts.duplicate, "image was", "images were") + " already here; nothing changed.");
    }
    if (problems) {
      lines.push(plural(problems, "file") + " could not be stored; the reasons are below.");
    }
    if (others) {
      lines.push(plural(others, "other file") + " set aside: not images (for example the disc's index or its viewer program).");
    }
    if (waiting === 1) {
      lines.push("1 study needs matching to a patient before it can be shared.");
    } else if (waiting) {
      lines.push(waiting + " studies need matching to a patient before they can be shared.");
    }
    summary.textContent = "";
    var heading = document.createElement("p");
    heading.className = "upload-summary-title";
    heading.textContent = signedOut ? "Stopped." : "Finished.";
    summary.appendChild(heading);
    lines.forEach(function (line) {
      var paragraph = document.createElement("p");
      paragraph.textContent = line;
      summary.appendChild(paragraph);
    });
    var actions = document.createElement("p");
    actions.className = "actions";
    if (waiting && reconciliationUrl) {
      var match = document.createElement("a");
      match.className = "button";
      match.href = reconciliationUrl;
      match.textContent = "Match studies to patients";
      actions.appendChild(match);
    }
    var retryable = failedJobs.filter(function (job) { return job.file; });
    if (retryable.length && !signedOut) {
      var retry = document.createElement("button");
      retry.type = "button";
      retry.className = "button button-secondary";
      retry.textContent = "Try the " + plural(retryable.length, "failed file") + " again";
      retry.addEventListener("click", function () {
        failedJobs = [];
        retryable.forEach(removeFailedRow);
        add(retryable.map(function (job) { return { file: job.file, name: job.name }; }));
      });
      actions.appendChild(retry);
    }
    if (actions.children.length) {
      summary.appendChild(actions);
    }
  }

  function removeFailedRow(job) {
    var list = document.getElementById("list-problem");
    Array.prototype.forEach.call(list.querySelectorAll("[data-outcome=failed]"), function (item) {
      if (item.querySelector(".upload-name").textContent === job.name) {
        item.remove();
      }
    });
    var group = document.getElementById("group-problem");
    group.querySelector("[data-count]").textContent = String(list.children.length);
    group.hidden = !list.children.length;
  }

  function announce(text) {
    summary.textContent = "";
    var paragraph = document.createElement("p");
    paragraph.className = "upload-summary-title";
    paragraph.textContent = text;
    summary.appendChild(paragraph);
  }

  function plural(count, singular, many) {
    return count + " " + (count === 1 ? singular : many || singular + "s");
  }

  function size(bytes) {
    var units = ["bytes", "KB", "MB", "GB"];
    var unit = 0;
    while (bytes >= 1024 && unit < units.length - 1) {
      bytes /= 1024;
      unit += 1;
    }
    return (unit ? bytes.toFixed(1) : String(bytes)) + " " + units[unit];
  }
})();
