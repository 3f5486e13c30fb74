from django.apps import AppConfig


class CouponsConfig(AppConfig):
    name = "apps.coupons"
    label = "coupons"
    verbose_name = "Coupons"
