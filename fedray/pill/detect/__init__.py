"""The pill detector: an ultralytics YOLOv3 trained on synthetic scenes (`stage=detect`)."""
