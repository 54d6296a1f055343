package geoindex

// Centroid returns a representative point for a country (ISO 3166-1
// alpha-2), or failing that its continent, for records that carry no
// coordinates (the GeoLite2-Country layout). The points lean towards where
// people live rather than the geometric centre (Sydney rather than the
// outback), because what matters is which node is nearest to most clients.
// Countries not listed fall back to their continent.
func Centroid(country, continent [2]byte) ([2]float32, bool) {
	if c, ok := countryPoints[country]; ok {
		return c, true
	}
	if c, ok := continentPoints[continent]; ok {
		return c, true
	}
	return [2]float32{}, false
}

func cc(s string) [2]byte { return [2]byte{s[0], s[1]} }

var continentPoints = map[[2]byte][2]float32{
	cc("AF"): {2.0, 21.0},
	cc("AN"): {-80.0, 0.0},
	cc("AS"): {30.0, 105.0},
	cc("EU"): {50.0, 10.0},
	cc("NA"): {39.0, -95.0},
	cc("OC"): {-30.0, 145.0},
	cc("SA"): {-15.0, -55.0},
}

var countryPoints = map[[2]byte][2]float32{
	cc("AD"): {42.5, 1.5}, cc("AE"): {24.5, 54.5}, cc("AF"): {34.5, 69.2}, cc("AL"): {41.3, 19.8},
	cc("AM"): {40.2, 44.5}, cc("AO"): {-8.8, 13.2}, cc("AR"): {-34.6, -58.4}, cc("AT"): {48.2, 16.4},
	cc("AU"): {-33.9, 151.2}, cc("AZ"): {40.4, 49.9}, cc("BA"): {43.9, 18.4}, cc("BD"): {23.8, 90.4},
	cc("BE"): {50.8, 4.4}, cc("BG"): {42.7, 23.3}, cc("BH"): {26.2, 50.6}, cc("BO"): {-16.5, -68.1},
	cc("BR"): {-23.5, -46.6}, cc("BY"): {53.9, 27.6}, cc("CA"): {43.7, -79.4}, cc("CH"): {47.4, 8.5},
	cc("CL"): {-33.4, -70.7}, cc("CN"): {31.2, 121.5}, cc("CO"): {4.7, -74.1}, cc("CR"): {9.9, -84.1},
	cc("CU"): {23.1, -82.4}, cc("CY"): {35.2, 33.4}, cc("CZ"): {50.1, 14.4}, cc("DE"): {50.1, 8.7},
	cc("DK"): {55.7, 12.6}, cc("DO"): {18.5, -69.9}, cc("DZ"): {36.7, 3.1}, cc("EC"): {-2.2, -79.9},
	cc("EE"): {59.4, 24.8}, cc("EG"): {30.0, 31.2}, cc("ES"): {40.4, -3.7}, cc("ET"): {9.0, 38.7},
	cc("FI"): {60.2, 24.9}, cc("FR"): {48.9, 2.4}, cc("GB"): {51.5, -0.1}, cc("GE"): {41.7, 44.8},
	cc("GH"): {5.6, -0.2}, cc("GR"): {38.0, 23.7}, cc("GT"): {14.6, -90.5}, cc("HK"): {22.3, 114.2},
	cc("HN"): {14.1, -87.2}, cc("HR"): {45.8, 16.0}, cc("HU"): {47.5, 19.0}, cc("ID"): {-6.2, 106.8},
	cc("IE"): {53.3, -6.3}, cc("IL"): {32.1, 34.8}, cc("IN"): {19.1, 72.9}, cc("IQ"): {33.3, 44.4},
	cc("IR"): {35.7, 51.4}, cc("IS"): {64.1, -21.9}, cc("IT"): {45.5, 9.2}, cc("JM"): {18.0, -76.8},
	cc("JO"): {31.9, 35.9}, cc("JP"): {35.7, 139.7}, cc("KE"): {-1.3, 36.8}, cc("KH"): {11.6, 104.9},
	cc("KR"): {37.6, 127.0}, cc("KW"): {29.4, 48.0}, cc("KZ"): {43.2, 76.9}, cc("LB"): {33.9, 35.5},
	cc("LK"): {6.9, 79.9}, cc("LT"): {54.7, 25.3}, cc("LU"): {49.6, 6.1}, cc("LV"): {56.9, 24.1},
	cc("MA"): {33.6, -7.6}, cc("MD"): {47.0, 28.9}, cc("MK"): {42.0, 21.4}, cc("MM"): {16.9, 96.2},
	cc("MN"): {47.9, 106.9}, cc("MT"): {35.9, 14.5}, cc("MX"): {19.4, -99.1}, cc("MY"): {3.1, 101.7},
	cc("NG"): {6.5, 3.4}, cc("NL"): {52.4, 4.9}, cc("NO"): {59.9, 10.8}, cc("NP"): {27.7, 85.3},
	cc("NZ"): {-36.8, 174.8}, cc("OM"): {23.6, 58.4}, cc("PA"): {9.0, -79.5}, cc("PE"): {-12.0, -77.0},
	cc("PH"): {14.6, 121.0}, cc("PK"): {24.9, 67.0}, cc("PL"): {52.2, 21.0}, cc("PR"): {18.4, -66.1},
	cc("PT"): {38.7, -9.1}, cc("PY"): {-25.3, -57.6}, cc("QA"): {25.3, 51.5}, cc("RO"): {44.4, 26.1},
	cc("RS"): {44.8, 20.5}, cc("RU"): {55.8, 37.6}, cc("SA"): {24.7, 46.7}, cc("SE"): {59.3, 18.1},
	cc("SG"): {1.35, 103.8}, cc("SI"): {46.1, 14.5}, cc("SK"): {48.1, 17.1}, cc("SV"): {13.7, -89.2},
	cc("TH"): {13.8, 100.5}, cc("TN"): {36.8, 10.2}, cc("TR"): {41.0, 29.0}, cc("TW"): {25.0, 121.5},
	cc("TZ"): {-6.8, 39.3}, cc("UA"): {50.4, 30.5}, cc("UG"): {0.3, 32.6}, cc("US"): {37.4, -92.2},
	cc("UY"): {-34.9, -56.2}, cc("UZ"): {41.3, 69.3}, cc("VE"): {10.5, -66.9}, cc("VN"): {10.8, 106.7},
	cc("ZA"): {-26.2, 28.0}, cc("ZW"): {-17.8, 31.0},
}
