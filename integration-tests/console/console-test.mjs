// The console in headless Chromium (Debian's, driven by playwright-core), against a stack that
// integration-tests/console-test.sh started with keys. It does what a user does: enters the admin
// key, starts a security-attack run from the page, watches the charts move, the window table fill
// and the alerts appear, opens the events behind an alert, filters the live tail, drops the tail's
// connection, and checks that the tail skipped nothing across the reconnect.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.LOGPIPE_NODE_DIR, "node_modules", "x.js"));
const { chromium } = require("playwright-core");

const URL = process.env.LOGPIPE_CONSOLE_URL;
const KEY = process.env.LOGPIPE_ADMIN_KEY;
const SHOTS = process.env.LOGPIPE_SHOTS;

let passed = 0;
let failed = 0;
function check(what, ok, detail = "") {
  if (ok) { passed++; console.log(`ok - ${what}`); } else { failed++; console.log(`not ok - ${what} ${detail}`); }
}

async function until(what, f, timeoutMs) {
  const started = Date.now();
  let last;
  while (Date.now() - started < timeoutMs) {
    try { last = await f(); if (last) return last; } catch (e) { last = e.message; }
    await new Promise((r) => setTimeout(r, 500));
  }
  console.log(`# timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
  return null;
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
try {
  await page.goto(URL + "/");
  check("the gateway serves the console", (await page.title()) === "logpipe console");
  check("it asks for a key when the gateway has keys",
    !!(await until("key prompt", async () => (await page.textContent("#message")).includes("API key"), 5000)));

  await page.fill("#key", KEY);
  await page.click("#keyform button");
  await until("status", async () => (await page.textContent("#gen-state")).includes("idle"), 10000);
  check("with the key the header shows the generators idle", (await page.textContent("#gen-state")).includes("idle"));

  await page.selectOption("#profile", "security-attack");
  await page.fill("#rate", "1000");
  await page.fill("#duration", "300");
  await page.click("#start");
  check("a security-attack run starts from the page",
    !!(await until("running", async () => (await page.textContent("#gen-state")).includes("running"), 15000)));

  const moving = await until("charts moving", () => page.evaluate(() => {
    const S = window.logpipeConsole.state.samples;
    if (S.length < 3) return false;
    const a = S[S.length - 3], b = S[S.length - 1];
    return b.stored > a.stored && b.generated > a.generated && b.acked > a.acked && b.consumed > a.consumed;
  }), 30000);
  check("the stage charts move (generated, acknowledged, consumed, stored all grow)", !!moving,
    moving ? "" : JSON.stringify(await page.evaluate(() => window.logpipeConsole.state.samples.slice(-4)
      .map(({ t, generated, acked, consumed, stored }) => ({ t, generated, acked, consumed, stored })))));
  check("the lag chart has a series per partition",
    await page.evaluate(() => Object.keys(window.logpipeConsole.state.samples.at(-1).lag || {}).length) >= 1);

  check("the window table fills",
    !!(await until("windows", async () => (await page.locator("#windows tbody tr").count()) > 0, 30000)));

  const alert = await until("alerts", async () => {
    const kinds = await page.locator("#alerts tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.kind));
    return kinds.find((k) => k === "brute_force" || k === "sql_injection");
  }, 90000);
  check("the attack's alerts appear in the list", !!alert, String(alert));
  if (alert) {
    await page.locator(`#alerts tbody tr[data-kind="${alert}"] a`).first().click();
    const rows = await until("alert events", async () => (await page.locator("#events .row").count()) > 0, 10000);
    check("an alert's link shows the events behind it", !!rows);
  }
  await page.screenshot({ path: path.join(SHOTS, "console.png"), fullPage: true });

  // The tail follows a filter.
  await page.fill("#tail-service", "auth");
  await page.selectOption("#tail-level", "WARN");
  await page.click("#tail-filter button");
  await until("tail rows", async () => (await page.locator("#tail .row").count()) >= 30, 30000);
  // From here on the stream is open: every auth WARN+ event made later must reach the tail.
  const streaming = Date.now() + 1000;
  const rows = await page.locator("#tail .row").evaluateAll((rs) => rs.map((r) => [r.dataset.service, r.dataset.level]));
  check("the live tail follows its filter (service auth, WARN and above)",
    rows.length >= 30 && rows.every(([s, l]) => s === "auth" && ["WARN", "ERROR", "FATAL"].includes(l)),
    JSON.stringify(rows.slice(0, 5)));

  // A dropped connection resumes where it left off.
  await new Promise((r) => setTimeout(r, 4000));
  const connects = await page.evaluate(() => window.logpipeConsole.state.tail.connects);
  const cut = Date.now();
  await page.evaluate(() => window.logpipeConsole.reconnectTail());
  check("the tail reconnects by itself",
    !!(await until("reconnect", () => page.evaluate((c) => window.logpipeConsole.state.tail.connects > c, connects), 10000)));
  await new Promise((r) => setTimeout(r, 8000));
  await page.click("#stop");
  await new Promise((r) => setTimeout(r, 4000));
  // Every stored auth WARN+ event from the stream's start to 6 s after the cut is in the tail.
  const from = new Date(streaming).toISOString(), to = new Date(cut + 6000).toISOString();
  const gap = await page.evaluate(async ([from, to, key]) => {
    const events = [];
    let cursor = null;
    for (let page = 0; page < 20; page++) {
      const q = new URLSearchParams({ service: "auth", min_level: "WARN", from, to, limit: "1000" });
      if (cursor) q.set("cursor", cursor);
      const r = await (await fetch(`/api/v1/events?${q}`, { headers: { Authorization: `Bearer ${key}` } })).json();
      events.push(...r.events);
      cursor = r.next_cursor;
      if (!cursor) break;
    }
    const seen = window.logpipeConsole.state.tail.seen;
    // What the collector had stored of this filter by now, newest first: says whether a miss is
    // a stall of the pipeline (the newest is older than the range) or of the query.
    const latest = await (await fetch(`/api/v1/events?service=auth&min_level=WARN&limit=1`,
      { headers: { Authorization: `Bearer ${key}` } })).json();
    return { stored: events.length, newest: latest.events?.[0]?.timestamp ?? null, from, to, missing: events.filter((e) => !seen.has(e.event_id)).length,
             dropped: window.logpipeConsole.state.tail.dropped, complete: cursor === null };
  }, [from, to, KEY]);
  check("across the reconnect the tail missed no stored event",
    gap.stored > 0 && gap.missing === 0 && gap.dropped === 0 && gap.complete, JSON.stringify(gap));
  await page.locator("#tail").screenshot({ path: path.join(SHOTS, "console-tail.png") });
  check("the page raised no script error", errors.length === 0, JSON.stringify(errors));
} catch (e) {
  check("the browser run finished", false, e.stack);
} finally {
  await browser.close();
}
console.log(`screenshots in ${SHOTS}`);
console.log(`console-page: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
