from django.urls import path

from . import api

urlpatterns = [
    path("campaigns/", api.CampaignListCreateView.as_view(), name="coupon-campaigns"),
    path("campaigns/<int:campaign_id>/", api.CampaignDetailView.as_view(), name="coupon-campaign"),
    path("campaigns/<int:campaign_id>/issue/", api.IssueView.as_view(), name="coupon-issue"),
    path(
        "campaigns/<int:campaign_id>/my-request/",
        api.MyRequestView.as_view(),
        name="coupon-my-request",
    ),
    path("mine/", api.MyCouponsView.as_view(), name="coupon-mine"),
]
