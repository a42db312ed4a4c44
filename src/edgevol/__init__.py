"""edgevol: the Volume and Content device API for edge devices."""
