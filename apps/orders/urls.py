from django.urls import path

from . import api

product_urlpatterns = [
    path("", api.ProductListCreateView.as_view(), name="products"),
]

urlpatterns = [
    path("", api.OrderListCreateView.as_view(), name="orders"),
    path("<int:order_id>/", api.OrderDetailView.as_view(), name="order"),
    path("<int:order_id>/cancel/", api.OrderCancelView.as_view(), name="order-cancel"),
]
