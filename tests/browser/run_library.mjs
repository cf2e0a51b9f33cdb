#!/usr/bin/env node
// Runs an upload library (Resumable.js, flow.js, …) in a real browser: it
// opens page_url (a page of the site that loads the library and sets
// `window.uploadResult` when the library reports the file done or
// failed), chooses file_path in its `input[type=file]`, and waits for that
// result.
//
// Input: {page_url, file_path, timeout_ms} (argv[2] or stdin).
// Output: one JSON line: {result, requests: [{method, url, status}]}, every
// request the page made to another origin, in order.

import { fail as failAs, readInput, withPage } from './chromium.mjs';

const fail = (message) => failAs('run_library', message);

async function main() {
  const input = await readInput();
  const timeout = Number.isFinite(input.timeout_ms) ? input.timeout_ms : 30000;
  const requests = [];
  await withPage('run_library', timeout, async (page) => {
    const origin = new URL(input.page_url).origin;
    page.on('requestfinished', async (request) => {
      if (new URL(request.url()).origin === origin) return;
      const response = await request.response();
      requests.push({ method: request.method(), url: request.url(), status: response ? response.status() : 0 });
    });
    page.on('requestfailed', (request) => {
      requests.push({ method: request.method(), url: request.url(), status: 0, failure: request.failure()?.errorText });
    });
    try {
      const loaded = await page.goto(input.page_url, { waitUntil: 'load' });
      if (!loaded || !loaded.ok()) throw new Error(`the page answered ${loaded ? loaded.status() : 'nothing'}`);
      await page.locator('input[type=file]').setInputFiles(input.file_path);
      await page.waitForFunction(() => window.uploadResult !== undefined, null, { timeout });
      const result = await page.evaluate(() => window.uploadResult);
      process.stdout.write(`${JSON.stringify({ result, requests })}\n`);
    } catch (error) {
      fail(`${error && error.stack ? error.stack : error}\n  requests: ${JSON.stringify(requests)}`);
    }
  });
}

main().catch((error) => fail(error && error.stack ? error.stack : String(error)));
