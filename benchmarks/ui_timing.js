// Load times of Dagster UI pages in headless Chromium (playwright-core, /usr/bin/chromium).
//   node benchmarks/ui_timing.js BASE_URL OUT_DIR
// For each page: milliseconds from navigation until the text that shows its data is visible,
// and a screenshot. Prints one JSON object. Used by benchmarks/ui_scale.py.
const { chromium } = require('playwright-core');
const [base, out] = process.argv.slice(2);

const pages = [
  { name: 'asset_page', path: '/assets/milvus_vectors', ready: (p) => p.getByText('Latest materialization', { exact: false }).first() },
  { name: 'partitions_tab', path: '/assets/milvus_vectors?view=partitions', ready: (p) => p.getByText('Partitions Selected', { exact: false }).first() },
  { name: 'checks_view', path: '/assets/milvus_vectors?view=checks', ready: (p) => p.getByText('Latest execution', { exact: false }).first() },
  { name: 'backfill_dialog', path: '/assets/milvus_vectors', click: 'Materialize', ready: (p) => p.getByText('Launch backfill', { exact: false }).first() },
];

(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'] });
  const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
  const page = await context.newPage();
  // Dismiss the first-visit dialog once, so it does not count against the pages.
  await page.goto(base + '/assets', { waitUntil: 'networkidle', timeout: 120000 });
  const skip = page.getByRole('button', { name: 'Skip' });
  if (await skip.count()) { await skip.first().click(); }
  const results = {};
  for (const spec of pages) {
    const started = Date.now();
    try {
      await page.goto(base + spec.path, { waitUntil: 'domcontentloaded', timeout: 120000 });
      if (spec.click) {
        const button = page.getByRole('button', { name: spec.click }).first();
        await button.waitFor({ state: 'visible', timeout: 120000 });
        await button.click();
        // Materialising one asset of the multi-asset first asks to confirm its siblings.
        const confirm = page.getByRole('button', { name: 'Confirm' });
        try { await confirm.waitFor({ state: 'visible', timeout: 5000 }); await confirm.click(); } catch (e) { /* no confirmation asked */ }
      }
      await spec.ready(page).waitFor({ state: 'visible', timeout: 120000 });
      results[spec.name] = { ms: Date.now() - started };
    } catch (err) {
      results[spec.name] = { ms: null, error: String(err).split('\n')[0] };
    }
    await page.screenshot({ path: `${out}/${spec.name}.png` });
  }
  console.log(JSON.stringify(results));
  await browser.close();
})();
