// The page talks to the same server: /v1/vococli/media (videos under the media root),
// /v1/vococli/thumbnails (a frame strip), /v1/vococli/caches (compression progress) and
// /v1/chat/completions (streamed answers, server-sent events).
const $ = (id) => document.getElementById(id);
const key = new URLSearchParams(location.search).get("key");  // when the server asks for one
const auth = key ? {"Authorization": `Bearer ${key}`} : {};
const headers = {"Content-Type": "application/json", ...auth};
const get = (url) => fetch(url, {headers: auth});

async function loadVideos(select) {
  const r = await get("v1/vococli/media");
  const list = (await r.json()).data;
  $("video").innerHTML = list.map((v) => `<option value="${v.path}">${v.path}</option>`).join("");
  if (select) $("video").value = select;
  showStrip();
}

function showStrip() {
  const v = $("video").value;
  $("strip").innerHTML = v ? `<img alt="frames of ${v}" src="v1/vococli/thumbnails?video=${encodeURIComponent(v)}${key ? "&key=" + encodeURIComponent(key) : ""}">` : "";
}

async function progress(video, stop) {
  while (!stop.done) {
    const caches = (await (await get("v1/vococli/caches")).json()).data;
    const mine = caches.find((c) => c.video === video.split("/").pop() && c.status);
    if (mine && mine.status.state === "compressing") {
      $("status").textContent = `compressing: ${mine.status.frames_done} of ${mine.status.frames_planned} frames`;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function ask() {
  const video = $("video").value, question = $("question").value.trim();
  if (!video || !question) return;
  $("answer").textContent = "";
  $("answer").className = "";
  $("status").textContent = "";
  const stop = {done: false};
  progress(video, stop);
  const body = {model: "vococli", stream: true, messages: [{role: "user", content: [
    {type: "text", text: question}, {type: "video_url", video_url: {url: video}}]}]};
  try {
    const r = await fetch("v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let at;
      while ((at = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, at).replace(/^data: /, "");
        buffer = buffer.slice(at + 2);
        if (line === "[DONE]") continue;
        const event = JSON.parse(line);
        if (event.error) throw new Error(event.error.message);
        const piece = event.choices && event.choices[0].delta.content;
        if (piece) $("answer").textContent += piece;
      }
    }
    $("status").textContent = "done";
  } catch (e) {
    $("answer").className = "error";
    $("answer").textContent = e.message;
    $("status").textContent = "";
  } finally {
    stop.done = true;
  }
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  $("status").textContent = `uploading ${file.name}`;
  const r = await fetch(`v1/vococli/media/${encodeURIComponent(file.name)}`, {method: "PUT", body: file, headers: auth});
  if (!r.ok) { $("status").textContent = (await r.json()).error.message; return; }
  $("status").textContent = `${file.name} uploaded`;
  await loadVideos(file.name);
}

$("ask").addEventListener("click", ask);
$("question").addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });
$("video").addEventListener("change", showStrip);
$("upload").addEventListener("change", upload);
loadVideos();
