import pytest

from geoloc.data.names import BadImageName, format_image_name, parse_image_name

REAL = "@0543256.96@4178906.70@10@S@037.75535@-122.45785@JgmjuX-nMQPKYDOaKoObsw@@000@@@@201311@01@.jpg"


def test_real_sf_xs_name_parses_utm_and_heading():
    meta = parse_image_name(REAL, need_heading=True)
    assert meta.utm_east == pytest.approx(543256.96)
    assert meta.utm_north == pytest.approx(4178906.70)
    assert meta.heading == 0.0


@pytest.mark.parametrize("ext", [".jpg", ".JPG", ".jpeg", ".Jpeg", ".png", ".PNG"])
def test_extension_is_case_insensitive(ext):
    assert parse_image_name(REAL.replace(".jpg", ext)).utm_north == pytest.approx(4178906.70)


def test_negative_and_decimal_coordinates_and_heading_wraps():
    name = format_image_name(-12.5, -0.25, 370.0)
    meta = parse_image_name(name, need_heading=True)
    assert (meta.utm_east, meta.utm_north, meta.heading) == (-12.5, -0.25, 10.0)


def test_heading_is_optional_unless_needed():
    name = format_image_name(1.0, 2.0, None)
    assert parse_image_name(name).heading is None
    with pytest.raises(BadImageName, match="heading is empty"):
        parse_image_name(name, need_heading=True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("@abc@4178906.70@10@S@@@@@000@@@@@@.jpg", "utm_east is not a number: 'abc'"),
        ("@1@@10@S@@@@@000@@@@@@.jpg", "utm_north is empty"),
        ("@1@2@10@S@@@@@north@@@@@@.jpg", "heading is not a number"),
        ("@1@2@3@.jpg", "expected 14"),
        ("photo.jpg", "expected 14"),
        ("@1@2@10@S@@@@@000@@@@@@.gif", "extension '.gif'"),
        ("@nan@2@10@S@@@@@000@@@@@@.jpg", "utm_east is not finite"),
    ],
)
def test_bad_names_name_the_file_and_the_field(name, message):
    with pytest.raises(BadImageName) as err:
        parse_image_name(f"some/dir/{name}", need_heading=True)
    assert name in str(err.value) and message in str(err.value)


def test_format_refuses_separators_in_fields():
    with pytest.raises(ValueError):
        format_image_name(1, 2, 3, note="a@b")
