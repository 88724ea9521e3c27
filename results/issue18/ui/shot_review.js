const { chromium } = require('playwright-core');
const base = process.argv[2], out = process.argv[3], bid = process.argv[4];
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  async function go(url, file) { await page.goto(base + url); await page.waitForTimeout(7000);
    const skip = page.getByRole('button', { name: 'Skip' });
    if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(1000); }
    await page.screenshot({ path: `${out}/${file}` }); }
  await go(`/runs/b/${bid}?tab=partitions`, '15_backfill_page.png');
  await go('/assets/milvus_vectors?view=partitions', '16_partitions_tab.png');
  await go('/assets/milvus_vectors?view=checks', '17_checks_list.png');
  await browser.close();
})();
