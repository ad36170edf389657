from rest_framework.routers import SimpleRouter

from batches.api.views import BatchViewSet, FileViewSet, ModelViewSet

router = SimpleRouter(trailing_slash=False)
router.register("files", FileViewSet, basename="file")
router.register("batches", BatchViewSet, basename="batch")
router.register("models", ModelViewSet, basename="model")

urlpatterns = router.urls
