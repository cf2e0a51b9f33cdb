// What the browser tests' scripts share: Debian's Chromium (never a
// browser that a tool downloads), started by playwright-core in a fresh
// profile, and the one way they report failure and read their input.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The input: one JSON object in argv[2], or on stdin when there is none. */
export async function readInput() {
  if (process.argv[2] !== undefined) return JSON.parse(process.argv[2]);
  let text = '';
  process.stdin.setEncoding('utf8');
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

/** Reports a failure on stderr and sets a failing exit status. */
export function fail(name, message) {
  process.stderr.write(`${name}: ${message}\n`);
  process.exitCode = 1;
}

/**
 * Runs `body(page)` in a fresh Chromium within `timeout` ms (a watchdog
 * leaves 10 s after it), then closes the browser and removes its profile.
 */
export async function withPage(name, timeout, body) {
  const watchdog = setTimeout(() => {
    fail(name, `gave up after ${timeout + 10000} ms`);
    process.exit(2);
  }, timeout + 10000);
  watchdog.unref();
  const profile = await mkdtemp(join(tmpdir(), 'upload-receiver-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      timeout,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(timeout);
    page.setDefaultNavigationTimeout(timeout);
    await body(page);
  } finally {
    if (context) await context.close().catch((e) => fail(name, `closing the browser: ${e}`));
    await rm(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch((e) =>
      fail(name, `removing ${profile}: ${e}`),
    );
    clearTimeout(watchdog);
  }
}
