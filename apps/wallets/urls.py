from django.urls import path

from . import api

urlpatterns = [
    path("", api.WalletListCreateView.as_view(), name="wallets"),
    path("<int:wallet_id>/", api.WalletDetailView.as_view(), name="wallet"),
    path(
        "<int:wallet_id>/transactions/",
        api.WalletTransactionListCreateView.as_view(),
        name="wallet-transactions",
    ),
]
