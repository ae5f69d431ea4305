"""The quick start's UI journey in a real browser: Debian's Chromium driven by Playwright
against ``dagster dev`` on the captains example."""
