"""The lab's routes. config/urls.py includes them only when `LAB_ENABLED` is on, at the
paths the bench has always used (/bench/noop/ and /api/bench/...)."""

from django.urls import URLPattern, URLResolver, include, path

from . import api

bench_api_urlpatterns: list[URLPattern] = [
    path("noop/", api.AnonymousNoopView.as_view()),
    path("noop-auth/", api.AuthenticatedNoopView.as_view()),
    path("noop-stock-auth/", api.StockTokenAuthNoopView.as_view()),
    path("one-query/", api.OneQueryView.as_view()),
    path("coupons/<int:campaign_id>/naive-issue/", api.NaiveIssueView.as_view()),
    path("coupons/<int:campaign_id>/gate-only-issue/", api.GateOnlyIssueView.as_view()),
    path("orders/synchronous/", api.SynchronousCheckoutView.as_view()),
    # The real POST /api/wallets/{id}/transactions/, applied naively (same body and answers).
    path("wallets/<int:wallet_id>/naive-transactions/", api.NaiveTransactionView.as_view()),
]

urlpatterns: list[URLPattern | URLResolver] = [
    path("bench/noop/", api.plain_noop),
    path("api/bench/", include(bench_api_urlpatterns)),
]
