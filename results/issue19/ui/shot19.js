const { chromium } = require('playwright-core');
(async () => {
  const [base, out] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-background-networking'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const pages = [['01_runs_of_a_cli_backfill', '/runs'], ['02_cli_run_in_process', '/runs/49260573-acde-4929-8814-50a11519fd0c'], ['03_landing_index', '/assets/landing_index']];
  for (const [name, path] of pages) {
    await page.goto(base + path);
    await page.waitForTimeout(6000);
    const skip = page.getByRole('button', { name: 'Skip' });
    if (await skip.count()) { await skip.click(); await page.waitForTimeout(1000); }
    await page.screenshot({ path: `${out}/${name}.png` });
  }
  await browser.close();
})();
