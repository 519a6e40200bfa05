// A web page on another origin, in headless Chromium, against an open gateway (no keys: the case
// where only the browser protections stand between a page and the pipeline). The page tries what a
// malicious site could: start generation and inject a FATAL line through the gateway with requests a
// browser sends without asking first (no-cors fetch, a text/plain form), call the generator and
// the collector around the gateway, and frame the console. A second page reaches the gateway under
// another name, as after DNS rebinding. Afterwards, from outside the browser: nothing changed.
import { createRequire } from "node:module";
import http from "node:http";
import path from "node:path";

const require = createRequire(path.join(process.env.LOGPIPE_NODE_DIR, "node_modules", "x.js"));
const { chromium } = require("playwright-core");

const GW = process.env.LOGPIPE_OPEN_GATEWAY_URL;
const GEN = process.env.LOGPIPE_GENERATOR_URL;
const COL = process.env.LOGPIPE_COLLECTOR_URL;
const MARKER = `hostile-page-${Date.now()}`;

let passed = 0;
let failed = 0;
function check(what, ok, detail = "") {
  if (ok) { passed++; console.log(`ok - ${what}`); } else { failed++; console.log(`not ok - ${what} ${detail}`); }
}

const attack = `<!doctype html><title>not logpipe</title>
<iframe id="framed" src="${GW}/" width="400" height="200"></iframe>
<iframe name="sink" width="10" height="10"></iframe>
<form id="form" method="POST" action="${GW}/api/v1/generator/start" enctype="text/plain" target="sink">
  <input name='{"rate_per_second":5000,"x":"' value='"}'>
</form>
<script>
(async () => {
  const tries = [
    [${JSON.stringify(GW)} + "/api/v1/generator/start", '{"rate_per_second":5000}', "text/plain"],
    [${JSON.stringify(GW)} + "/api/v1/logs?service=victim", "<10>1 2026-01-01T00:00:00Z h victim - - - FATAL ${MARKER}", "text/plain"],
    [${JSON.stringify(GEN)} + "/api/v1/generator/start", '{"rate_per_second":5000}', "text/plain"],
    [${JSON.stringify(COL)} + "/admin/filters/reload", "", "text/plain"],
  ];
  for (const [url, body, type] of tries) {
    try { await fetch(url, { method: "POST", mode: "no-cors", body, headers: { "content-type": type } }); } catch (_) {}
  }
  document.getElementById("form").submit();
  setTimeout(() => { window.done = true; }, 2000);
})();
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end(attack);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const gwPort = new URL(GW).port;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  // attacker.test resolves to this machine, as a rebound name would.
  args: ["--no-sandbox", "--host-resolver-rules=MAP attacker.test 127.0.0.1"],
});
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.done === true, null, { timeout: 20000 });
  await new Promise((r) => setTimeout(r, 3000));

  const status = await (await fetch(`${GW}/api/v1/generator/status`)).json();
  check("no cross-origin request started generation", status.instances_running === 0, JSON.stringify(status));
  const found = await (await fetch(`${GW}/api/v1/events?q=${MARKER}`)).json();
  check("no cross-origin request injected an event", Array.isArray(found.events) && found.events.length === 0,
    JSON.stringify(found).slice(0, 300));
  const framed = page.frames().find((f) => f !== page.mainFrame() && f.name() !== "sink");
  let framedTitle = "";
  try { framedTitle = await framed.title(); } catch (_) { framedTitle = "(blocked)"; }
  check("the console refuses to be framed", framedTitle !== "logpipe console", framedTitle);

  const rebound = await page.goto(`http://attacker.test:${gwPort}/`);
  check("a page reaching the gateway under a rebound name gets 421", rebound.status() === 421,
    String(rebound.status()));
  const postStatus = await page.evaluate(async () =>
    (await fetch("/api/v1/generator/start", { method: "POST", body: "{}", headers: { "content-type": "application/json" } })).status);
  check("its same-origin start request gets 421 too", postStatus === 421, String(postStatus));
  const after = await (await fetch(`${GW}/api/v1/generator/status`)).json();
  check("generation is still stopped", after.instances_running === 0, JSON.stringify(after));
} catch (e) {
  check("the hostile page ran", false, e.stack);
} finally {
  await browser.close();
  server.close();
}
console.log(`hostile-page: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
