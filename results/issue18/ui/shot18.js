const { chromium } = require('playwright-core');
const base = process.argv[2], out = process.argv[3];
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  async function go(url) { await page.goto(base + url); await page.waitForTimeout(6000);
    const skip = page.getByRole('button', { name: 'Skip' });
    if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(1000); } }
  await go('/assets/source_records?view=checks');
  await page.screenshot({ path: `${out}/01_checks_tab_failure_rate.png` });
  await page.getByText('Partitions', { exact: true }).last().click(); await page.waitForTimeout(4000);
  await page.screenshot({ path: `${out}/02_check_partitions.png` });
  await go('/assets/source_records?view=checks');
  await page.getByText('Execution history', { exact: true }).click(); await page.waitForTimeout(4000);
  await page.screenshot({ path: `${out}/03_check_execution_history.png` });
  await go('/assets/source_records');
  await page.screenshot({ path: `${out}/04_asset_overview.png` });
  await go('/assets');
  await page.screenshot({ path: `${out}/05_catalog.png` });
  await go('/assets/extracted_text?view=checks');
  await page.screenshot({ path: `${out}/06_checks_tab_text_frame_valid.png` });
  await browser.close();
})();
