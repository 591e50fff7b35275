from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from xaibench.harmony import crowd_views, views

app_patterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("card/<int:card>/", views.card_start, name="card"),
    path("card/<int:card>/done/", views.card_done, name="done"),
    path("card/<int:card>/<int:n>/", views.label_example, name="example"),
    path("card/<int:card>/<int:n>/picture/<str:slot>.png", views.picture, name="picture"),
    path("masks/", views.mask_start, name="masks"),
    path("masks/<int:n>/", views.mask_draw, name="mask"),
    path("masks/<int:n>/<str:slot>.png", views.mask_picture, name="mask_picture"),
    path("join/<str:token>/", crowd_views.join, name="join"),
    path("s/", crowd_views.session, name="session"),
    path("s/consent/", crowd_views.consent, name="consent"),
    path("s/instructions/", crowd_views.instructions, name="instructions"),
    path("s/done/", crowd_views.complete, name="complete"),
    path("s/<int:n>/", crowd_views.trial_view, name="trial"),
    path("s/<int:n>/picture/<str:slot>.png", crowd_views.trial_picture, name="trial_picture"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include((app_patterns, "harmony"))),
]
