// Screenshots of a backfill whose one run covers 7 tenants (issue #20 item 2).
// Usage: NODE_PATH=~/.cache/ui-shot/node_modules node shot.js BASE_URL OUT_DIR RUN_ID
const { chromium } = require('playwright-core');
(async () => {
  const [base, out, runId] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-background-networking'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const pages = [
    ['01_runs', '/runs'],
    ['02_run_over_7_tenants', `/runs/${runId}`],
    ['03_partitions', '/assets/milvus_vectors?view=partitions'],
    ['04_checks', '/assets/milvus_vectors?view=checks'],
  ];
  for (const [name, path] of pages) {
    await page.goto(base + path);
    await page.waitForTimeout(8000);
    const skip = page.getByRole('button', { name: 'Skip' });
    if (await skip.count()) { await skip.click(); await page.waitForTimeout(1000); }
    await page.screenshot({ path: `${out}/${name}.png` });
  }
  await browser.close();
})();
