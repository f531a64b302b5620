import shutil

import pytest

from v2v import osinfo

pytestmark = pytest.mark.skipif(shutil.which("osinfo-query") is None, reason="libosinfo-bin not installed")


def test_known_short_id_gives_its_url_without_a_note():
    url, note = osinfo.lookup("debian11")
    assert url == "http://debian.org/debian/11"
    assert note is None


def test_unknown_newer_version_falls_back_to_newest_older_of_same_distro_with_a_note():
    url, note = osinfo.lookup("debian99")
    assert url.startswith("http://debian.org/debian/")
    assert "debian99" in note and "osinfo-db" in note
