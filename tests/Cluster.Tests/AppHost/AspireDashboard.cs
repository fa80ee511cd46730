// Drives the Aspire dashboard (13.6) in Debian's headless Chromium through Playwright: log in with the browser token,
// read each resource's state on the resources page, and find a meter's instruments in a resource's metrics tree.
// Playwright's own browser download is never used: CHROMIUM_PATH or /usr/bin/chromium (infra/install-test-deps.sh).
using System.Text.RegularExpressions;
using Microsoft.Playwright;

namespace Cluster.Tests.AppHost;

public sealed class AspireDashboard : IAsyncDisposable
{
    private readonly IPlaywright _playwright;
    private readonly IBrowser _browser;
    private readonly IPage _page;
    private readonly string _base;

    private AspireDashboard(IPlaywright playwright, IBrowser browser, IPage page, string baseUrl) =>
        (_playwright, _browser, _page, _base) = (playwright, browser, page, baseUrl);

    /// <summary>The Chromium this machine has, or null (the test then skips and says how to install it).</summary>
    public static string? Chromium() =>
        new[] { Environment.GetEnvironmentVariable("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser" }
            .FirstOrDefault(p => !string.IsNullOrEmpty(p) && File.Exists(p));

    public static async Task<AspireDashboard> LoginAsync(string chromium, Uri dashboard, string browserToken)
    {
        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new()
        {
            ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        });
        var context = await browser.NewContextAsync(new() { ViewportSize = new() { Width = 1600, Height = 1000 } });
        context.SetDefaultTimeout(30_000);
        var page = await context.NewPageAsync();
        string baseUrl = dashboard.GetLeftPart(UriPartial.Authority);
        // /login?t=TOKEN checks the token, sets the session cookie and redirects to the resources page.
        // The first page of a freshly installed Chromium may wait on its font cache: a minute, not the default 30 s.
        await page.GotoAsync($"{baseUrl}/login?t={browserToken}", new() { Timeout = 60_000 });
        await page.WaitForURLAsync(baseUrl + "/", new() { Timeout = 60_000 });
        return new AspireDashboard(playwright, browser, page, baseUrl);
    }

    /// <summary>Waits until the resources page shows <paramref name="resource"/> in <paramref name="state"/> (it updates live).</summary>
    public async Task WaitForResourceStateAsync(string resource, string state, TimeSpan timeout)
    {
        if (_page.Url != _base + "/") await _page.GotoAsync(_base + "/");
        var row = _page.Locator("tr.resource-row[role=row]").Filter(new()
        {
            Has = _page.Locator(".resource-name-text", new() { HasTextRegex = new Regex($"^{Regex.Escape(resource)}$") }),
        });
        await Assertions.Expect(row.Locator(".state-column-cell")).ToHaveTextAsync(state, new() { Timeout = (float)timeout.TotalMilliseconds });
    }

    /// <summary>
    /// Waits until the metrics page of one of <paramref name="resources"/> lists <paramref name="instrument"/> under
    /// <paramref name="meter"/>, looking at each in turn (a page's tree updates live, but a resource's first metrics may
    /// come after the page was drawn).
    /// </summary>
    public async Task WaitForInstrumentAsync(string[] resources, string meter, string instrument, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        for (int turn = 0; ; turn++)
        {
            await _page.GotoAsync($"{_base}/metrics/resource/{resources[turn % resources.Length]}");
            var item = _page.Locator($"fluent-tree#metric-selector fluent-tree-item[title='{meter}'] fluent-tree-item[title='{instrument}']");
            try
            {
                await item.WaitForAsync(new() { Timeout = 5_000 });
                return;
            }
            catch (TimeoutException) when (DateTime.UtcNow < deadline) { }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _browser.DisposeAsync();
        _playwright.Dispose();
    }
}
