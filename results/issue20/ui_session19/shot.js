const { chromium } = require('playwright-core');
const [out, ...urls] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  let i = 0;
  for (const url of urls) {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForTimeout(5000);
    const skip = page.getByRole('button', { name: 'Skip' });
    if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(1500); }
    const file = `${out}/${String(++i).padStart(2, '0')}.png`;
    await page.screenshot({ path: file });
    console.log(file, url);
  }
  await browser.close();
})();
