const { chromium } = require('playwright-core');
const base = process.argv[2], out = process.argv[3];
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
  await page.goto(base + '/locations/vector_assets/sensors/check_alert_sensor'); await page.waitForTimeout(7000);
  const skip = page.getByRole('button', { name: 'Skip' });
  if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(1000); }
  await page.screenshot({ path: `${out}/11_alert_sensor_ticks.png` });
  // the tick that waits out its backoff: its skip reason
  const waiting = page.getByText('0 runs requested', { exact: true });
  const n = await waiting.count();
  if (n >= 4) { await waiting.nth(n - 1).click(); await page.waitForTimeout(2500);
    await page.screenshot({ path: `${out}/12_alert_sensor_waiting_tick.png` }); await page.getByRole('button', { name: 'Close' }).first().click(); await page.waitForTimeout(800); }
  const view = page.getByText('View', { exact: true });
  if (await view.count()) { await view.first().click(); await page.waitForTimeout(2500);
    await page.screenshot({ path: `${out}/13_alert_sensor_failed_tick_error.png` }); await page.getByRole('button', { name: 'Close' }).first().click(); await page.waitForTimeout(800); }
  await page.goto(base + '/automation'); await page.waitForTimeout(6000);
  await page.screenshot({ path: `${out}/14_automation_list.png` });
  await browser.close();
})();
