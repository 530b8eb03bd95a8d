import re

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


def test_negative_and_decimal_coordinates_and_a_formatted_heading_wraps():
    name = format_image_name(-12.5, -0.25, 370.0)
    meta = parse_image_name(name, need_heading=True)
    assert (meta.utm_east, meta.utm_north, meta.heading) == (-12.5, -0.25, 10.0)


@pytest.mark.parametrize("heading, written", [(359.97, "0.0"), (359.94, "359.9"), (-0.04, "0.0"), (720.0, "0.0")])
def test_a_formatted_heading_is_never_written_360(heading, written):
    assert format_image_name(1.0, 2.0, heading).split("@")[9] == written


@pytest.mark.parametrize("text, value", [("000", 0.0), ("360", 360.0), ("359.99", 359.99), ("+45.", 45.0), (".5", 0.5)])
def test_headings_are_read_as_written_from_0_to_360(text, value):
    # As CosPlace reads them: 360 stays 360 (a class of its own there), it is not wrapped to 0.
    assert parse_image_name(f"@1@2@@@@@@@{text}@@@@@@.jpg", need_heading=True).heading == value


@pytest.mark.parametrize("text", ["-20", "370", "360.01"])
def test_a_heading_outside_0_to_360_is_refused_naming_the_field(text):
    for need_heading in (True, False):  # wherever it is written
        with pytest.raises(BadImageName, match=f"field heading is {text}, outside 0 to 360 degrees"):
            parse_image_name(f"@1@2@@@@@@@{text}@@@@@@.jpg", need_heading=need_heading)


def test_fields_other_than_position_and_heading_may_hold_anything():
    meta = parse_image_name('@1.5@2@10 S@é@lat@lon@x,y"q@\n@@pitch@@@@note 100%@.jpg')
    assert (meta.utm_east, meta.utm_north, meta.heading) == (1.5, 2.0, None)


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
        ("@1@2@3@.jpg", "expected 14 '@'-separated fields (@utm_east@utm_north@...@note@.jpg), found 3"),
        (
            "photo.jpg",
            "expected 14 '@'-separated fields (@utm_east@utm_north@...@note@.jpg): the name must start with '@'",
        ),
        (
            "@1@2@10@S@@@@@000@@@@@@.jpg.jpg",
            "the name must end with '@' right before the extension .jpg, but '.jpg' follows the last '@'",
        ),
        ("@1@2@10@S@@@@@000@@@@@@.gif", "extension '.gif'"),
        ("@nan@2@10@S@@@@@000@@@@@@.jpg", "utm_east is not finite: 'nan'"),
        ("@1@-inf@10@S@@@@@000@@@@@@.jpg", "utm_north is not finite: '-inf'"),
    ],
)
def test_bad_names_name_the_file_and_the_field(name, message):
    with pytest.raises(BadImageName) as err:
        parse_image_name(f"some/dir/{name}", need_heading=True)
    assert name in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("field", ["utm_east", "utm_north", "heading"])
@pytest.mark.parametrize(
    "text", ["\u0661\u0662\u0663", "\uff11\uff12", "1_000", " 5 ", "5 ", "1e3", "0x1f", "--5", "1.2.3"]
)
def test_only_ascii_decimal_numbers_are_numbers_naming_the_field(field, text):
    # float() takes Arabic-Indic and full-width digits, '1_000', ' 5 ' and '1e3'; a name must mean
    # one position on every machine and to every reader of the dataset.
    fields = {"utm_east": "1", "utm_north": "2", "heading": "0", field: text}
    name = f"@{fields['utm_east']}@{fields['utm_north']}@@@@@@@{fields['heading']}@@@@@@.jpg"
    with pytest.raises(BadImageName, match=f"field {field} is not a number: {re.escape(repr(text))}"):
        parse_image_name(name, need_heading=True)


def test_format_refuses_separators_in_fields():
    with pytest.raises(ValueError):
        format_image_name(1, 2, 3, note="a@b")
