"""Volume I/O: read CT as clinics store it, keep its geometry, write label maps back on its grid."""
from .readers import list_dicom_series, read_label_map, read_label_map_on, read_volume
from .volume import Volume, display_spacing, from_display, to_display
from .writers import atomic_path, check_not_inputs, check_writable, make_folder, write_label_map

__all__ = ["Volume", "read_volume", "read_label_map", "read_label_map_on", "list_dicom_series", "write_label_map", "check_writable", "check_not_inputs", "atomic_path", "make_folder",
           "to_display", "from_display", "display_spacing"]
