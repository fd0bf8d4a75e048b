// Open each page URL given in headless Chromium (Debian's, no download) and wait until its
// player says how it went (window.result); print one JSON line per page; exit 1 if any
// failed. Bounded: 40 s per page.
import puppeteer from 'puppeteer-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const profile = mkdtempSync(join(tmpdir(), 'streamgate-chromium-'));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required', `--user-data-dir=${profile}`,
  ],
});
let failed = false;
try {
  for (const url of process.argv.slice(2)) {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    let result;
    try {
      await page.goto(url);
      await page.waitForFunction(() => window.result, { timeout: 40000, polling: 100 });
      result = await page.evaluate(() => window.result);
    } catch (e) {
      result = { ok: false, error: String(e), logs };
    }
    console.log(JSON.stringify({ url, ...result }));
    failed ||= !result.ok;
    await page.close();
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
