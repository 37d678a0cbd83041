"""Local fake model providers for the provider tests: HTTP servers on 127.0.0.1 speaking each provider's JSON
(``/work/shared/PROVIDERS.md``), checking every request field by field and answering from per-task scripts."""
