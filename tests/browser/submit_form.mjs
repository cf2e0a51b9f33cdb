#!/usr/bin/env node
// Submits an upload form in a real browser: Debian's Chromium (never a
// browser that a tool downloads), driven by playwright-core.
//
// Input: one JSON object in argv[2], or on stdin when there is no argument:
//   {form_url, file_path, expect_url_prefix, timeout_ms}
// It opens form_url, puts file_path into the form's `input[type=file]`,
// clicks its submit button and waits until the page's URL starts with
// expect_url_prefix and that page has loaded.
// Output: one JSON line on stdout:
//   {final_url, body_text, navigations: [{method, url, status}]}
// where `navigations` lists the main frame's navigation responses in order
// (redirects included). On failure: the error, the page's URL and the
// navigations so far on stderr, and a non-zero exit status.

import { fail as failAs, readInput, withPage } from './chromium.mjs';

const fail = (message) => failAs('submit_form', message);

async function main() {
  const input = await readInput();
  for (const key of ['form_url', 'file_path', 'expect_url_prefix']) {
    if (typeof input[key] !== 'string' || input[key] === '') throw new Error(`input needs a string ${key}`);
  }
  const timeout = Number.isFinite(input.timeout_ms) ? input.timeout_ms : 30000;
  const navigations = [];
  await withPage('submit_form', timeout, async (page) => {
    page.on('response', (response) => {
      const request = response.request();
      if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
        navigations.push({ method: request.method(), url: response.url(), status: response.status() });
      }
    });
    try {
      const form = await page.goto(input.form_url, { waitUntil: 'load' });
      if (!form || !form.ok()) throw new Error(`the form page answered ${form ? form.status() : 'nothing'}`);
      await page.locator('input[type=file]').setInputFiles(input.file_path);

      // Listen before clicking, so that no navigation can be missed.
      const arrived = page.waitForURL((url) => url.href.startsWith(input.expect_url_prefix), {
        waitUntil: 'load',
        timeout,
      });
      await page.locator('input[type=submit], button[type=submit]').first().click();
      await arrived;
      await page.waitForLoadState('load');

      const result = {
        final_url: page.url(),
        body_text: await page.locator('body').innerText(),
        navigations,
      };
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } catch (error) {
      let where = `\n  page url: ${page.url()}`;
      try {
        const text = await page.locator('body').innerText({ timeout: 2000 });
        where += `\n  page text: ${text.slice(0, 2000)}`;
      } catch {
        // The page may be gone or mid-navigation; the URL is enough.
      }
      fail(`${error && error.stack ? error.stack : error}${where}\n  navigations: ${JSON.stringify(navigations)}`);
    }
  });
}

main().catch((error) => fail(error && error.stack ? error.stack : String(error)));
