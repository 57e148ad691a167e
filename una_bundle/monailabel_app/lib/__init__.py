"""The UNA MONAI Label app's tasks (MONAI Label's sample-app layout: ``lib/infers``)."""
